"""Request and response bodies of the HTTP API (columnar arrays: one list per column)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, WithJsonSchema, field_validator, model_validator

__all__ = [
    "Candidates",
    "ErrorItem",
    "ErrorResponse",
    "PrerankRequest",
    "PrerankResponse",
    "RetrieveRequest",
    "UserInput",
]

FeatureValue = str | int | float | list[str | int]
AdId = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: An ad id as JSON carries it: checked vectorised after parsing (per-element pydantic constraints
#: cost ~1 ms per 10k ids), documented in the JSON schema as AdId.
WireAdId = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 2**63 - 1})]
UserId = Annotated[str, Field(min_length=1, max_length=64)]


class UserInput(BaseModel):
    """The user to rank for: an id known to the user feature store, raw features, or both.

    Raw features override the stored ones field by field; values are raw (e.g. "M" for gender,
    a list of movie ids for a history) and are encoded with the model's vocabularies.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: UserId | int | None = Field(None, description="user id in the user feature store (string or integer)")
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, description="raw feature values by field name (sparse, dense or sequence)"
    )

    @field_validator("id", mode="after")
    @classmethod
    def _id_to_str(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


def _decode(text: str, dtype: str, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is a string but not valid base64") from None
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of {size}-byte values")
    return np.frombuffer(raw, dtype=dtype)


class _CheckedIds(BaseModel):
    """The per-element form of the id column: run only when the vectorised checks found a bad id,
    for errors that name each bad element."""

    model_config = ConfigDict(strict=True)
    ad_ids: list[AdId]


def _id_array(ids: list[int]) -> np.ndarray:
    """int64 array of a JSON id list; a negative or out-of-range id raises pydantic's per-element
    errors (loc candidates.ad_ids.<i>)."""
    try:
        array = np.fromiter(ids, dtype=np.int64, count=len(ids))
    except OverflowError:
        array = None
    if array is None or (len(array) and array.min() < 0):
        _CheckedIds.model_validate({"ad_ids": ids})  # raises, naming every bad element
    assert array is not None
    return array


def check_arrays(ids: np.ndarray, bids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The vectorised checks every form of the candidate columns goes through."""
    if len(ids) == 0:
        raise ValueError("candidates.ad_ids is empty")
    if (ids < 0).any():
        raise ValueError(f"candidates.ad_ids[{int(np.argmax(ids < 0))}] is negative")
    if len(ids) > 1:
        ordered = np.sort(ids)
        if (ordered[1:] == ordered[:-1]).any():
            raise ValueError("candidates.ad_ids contains duplicate ids")
    if bids is None:
        return ids, None
    if len(bids) != len(ids):
        raise ValueError(f"candidates.bids has {len(bids)} values but candidates.ad_ids has {len(ids)}")
    bad = ~np.isfinite(bids) | (bids < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"candidates.bids[{i}] must be a finite number >= 0, got {float(bids[i])}")
    return ids, bids.astype(np.float32)


class Candidates(BaseModel):
    """Candidate ads from recall, as parallel columns.

    Each column is either a JSON array or a base64 string of little-endian binary values (int64
    ids, float32 bids). The base64 form is decoded straight into arrays, with no Python object
    per candidate; every check on either form runs vectorised.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    ad_ids: list[WireAdId] | str = Field(
        ...,
        min_length=1,
        description="candidate ad ids (non-negative 64-bit integers, unique): a JSON array, or base64 of "
        "little-endian int64",
    )
    bids: list[float] | str | None = Field(
        None,
        description="bid per candidate, same length as ad_ids (a JSON array, or base64 of little-endian "
        "float32); omitted: the ad's stored bid",
    )
    _ids: np.ndarray = PrivateAttr()
    _bids: np.ndarray | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Candidates:
        if isinstance(self.ad_ids, str):
            ids = _decode(self.ad_ids, "<i8", "candidates.ad_ids").astype(np.int64)
        else:
            ids = _id_array(self.ad_ids)
        bids = None
        if self.bids is not None:
            if isinstance(self.bids, str):
                bids = _decode(self.bids, "<f4", "candidates.bids").astype(np.float32)
            else:
                bids = np.asarray(self.bids, dtype=np.float64)
        self._ids, self._bids = check_arrays(ids, bids)
        return self

    @classmethod
    def from_arrays(cls, ids: np.ndarray, bids: np.ndarray | None = None) -> Candidates:
        """Candidates from arrays already decoded (e.g. a protobuf's packed fields), checked exactly
        as the JSON and base64 forms are; ValueError names the field."""
        out = cls.model_construct(ad_ids="", bids=None)
        out._ids, out._bids = check_arrays(np.asarray(ids, dtype=np.int64), bids)
        return out

    @property
    def ids(self) -> np.ndarray:
        """The ad ids as int64 (N,)."""
        return self._ids

    @property
    def bid_array(self) -> np.ndarray | None:
        """The bids as float32 (N,), or None."""
        return self._bids


class PrerankRequest(BaseModel):
    """POST /prerank body."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"user": {"id": "42"}, "candidates": {"ad_ids": [1193, 661, 914], "bids": [1.2, 0.8, 2.0]}, "top_k": 2}
            ]
        },
    )

    request_id: str | None = Field(None, max_length=128, description="echoed back for tracing")
    user: UserInput = Field(..., description="who to rank for")
    candidates: Candidates = Field(..., description="the ads to rank, as parallel arrays")
    top_k: int | None = Field(None, ge=1, le=1_000_000, description="return only the best k by eCPM (default: all)")
    unknown_user: Literal["defaults", "reject"] = Field(
        "defaults",
        description="a user id not in the store and no features: score with defaults "
        "(flagged in the response) or reject with 404",
    )


class RetrieveRequest(BaseModel):
    """POST /retrieve body: the best ads of the whole corpus for one user (when recall sends none)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"user": {"id": "42"}, "top_k": 100}]}
    )

    request_id: str | None = Field(None, max_length=128, description="echoed back for tracing")
    user: UserInput = Field(..., description="who to retrieve for")
    top_k: int = Field(100, ge=1, le=2000, description="how many ads to retrieve (by model score)")
    exact: bool = Field(
        False, description="score every ad; otherwise small corpora are scored exactly and large ones via FAISS"
    )
    unknown_user: Literal["defaults", "reject"] = Field("defaults", description="as in /prerank")


class PrerankResponse(BaseModel):
    """Candidates sorted by eCPM = pCTR x bid, best first."""

    request_id: str | None = Field(None, description="the request's request_id")
    model_version: str = Field(..., description="the model that scored this request")
    index_version: str = Field(..., description="the ad index the vectors came from")
    delta_seq: int = Field(
        ..., description="the store's last ad change (delta or pause) applied on top of index_version; 0: none"
    )
    user_known: bool = Field(..., description="false when the user was scored with default features")
    ad_ids: list[int] = Field(..., description="ranked ad ids")
    pctr: list[float] = Field(..., description="predicted click-through rate per ranked ad")
    ecpm: list[float] = Field(..., description="pctr x bid per ranked ad")
    unknown_ad_ids: list[int] = Field(
        ..., description="candidate ids not ranked: absent from the index, removed by a delta, or paused"
    )
    user_event: str | None = Field(
        None, description="the user's last event in the online user store that this response reflects (null: none)"
    )
    experiment: str | None = Field(None, description="the running A/B experiment (null: none)")
    arm: str | None = Field(None, description="the experiment arm that scored this user (sticky per user id)")


class ErrorItem(BaseModel):
    """One problem with a request (FastAPI's validation-error item)."""

    loc: list[str | int] = Field(..., description="where: e.g. ['body', 'candidates', 'ad_ids', 3]")
    msg: str = Field(..., description="what is wrong")
    type: str = Field(..., description="machine-readable kind, e.g. value_error, json_invalid, not_ready")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: all the problems found, not only the first."""

    detail: list[ErrorItem] = Field(..., description="every problem, each naming its field")
