from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("text", "integer", "number", "ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    integer: int
    number: float
    ids: IdList
    def __init__(self, text: _Optional[str] = ..., integer: _Optional[int] = ..., number: _Optional[float] = ..., ids: _Optional[_Union[IdList, _Mapping]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    features: _containers.MessageMap[str, FeatureValue]
    def __init__(self, id: _Optional[str] = ..., features: _Optional[_Mapping[str, FeatureValue]] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("request_id", "user", "ad_ids", "bids", "top_k", "reject_unknown_user", "ad_ids_le", "bids_le", "binary_response")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REJECT_UNKNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_LE_FIELD_NUMBER: _ClassVar[int]
    BIDS_LE_FIELD_NUMBER: _ClassVar[int]
    BINARY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user: User
    ad_ids: _containers.RepeatedScalarFieldContainer[int]
    bids: _containers.RepeatedScalarFieldContainer[float]
    top_k: int
    reject_unknown_user: bool
    ad_ids_le: bytes
    bids_le: bytes
    binary_response: bool
    def __init__(self, request_id: _Optional[str] = ..., user: _Optional[_Union[User, _Mapping]] = ..., ad_ids: _Optional[_Iterable[int]] = ..., bids: _Optional[_Iterable[float]] = ..., top_k: _Optional[int] = ..., reject_unknown_user: _Optional[bool] = ..., ad_ids_le: _Optional[bytes] = ..., bids_le: _Optional[bytes] = ..., binary_response: _Optional[bool] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("request_id", "model_version", "index_version", "delta_seq", "user_known", "ad_ids", "pctr", "ecpm", "unknown_ad_ids", "user_event", "experiment", "arm", "ad_ids_le", "pctr_le", "ecpm_le", "unknown_ad_ids_le")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELTA_SEQ_FIELD_NUMBER: _ClassVar[int]
    USER_KNOWN_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_FIELD_NUMBER: _ClassVar[int]
    PCTR_FIELD_NUMBER: _ClassVar[int]
    ECPM_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_EVENT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_LE_FIELD_NUMBER: _ClassVar[int]
    PCTR_LE_FIELD_NUMBER: _ClassVar[int]
    ECPM_LE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_AD_IDS_LE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_version: str
    index_version: str
    delta_seq: int
    user_known: bool
    ad_ids: _containers.RepeatedScalarFieldContainer[int]
    pctr: _containers.RepeatedScalarFieldContainer[float]
    ecpm: _containers.RepeatedScalarFieldContainer[float]
    unknown_ad_ids: _containers.RepeatedScalarFieldContainer[int]
    user_event: str
    experiment: str
    arm: str
    ad_ids_le: bytes
    pctr_le: bytes
    ecpm_le: bytes
    unknown_ad_ids_le: bytes
    def __init__(self, request_id: _Optional[str] = ..., model_version: _Optional[str] = ..., index_version: _Optional[str] = ..., delta_seq: _Optional[int] = ..., user_known: _Optional[bool] = ..., ad_ids: _Optional[_Iterable[int]] = ..., pctr: _Optional[_Iterable[float]] = ..., ecpm: _Optional[_Iterable[float]] = ..., unknown_ad_ids: _Optional[_Iterable[int]] = ..., user_event: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., ad_ids_le: _Optional[bytes] = ..., pctr_le: _Optional[bytes] = ..., ecpm_le: _Optional[bytes] = ..., unknown_ad_ids_le: _Optional[bytes] = ...) -> None: ...
