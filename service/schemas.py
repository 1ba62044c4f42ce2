"""Request and response bodies of the HTTP API (columnar arrays: one list per column)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

__all__ = [
    "Candidates",
    "ErrorItem",
    "ErrorResponse",
    "PrerankRequest",
    "PrerankResponse",
    "RetrieveRequest",
    "UserInput",
    "parse_prerank",
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
    def _check(self, info: ValidationInfo) -> Candidates:
        columns = info.context.get(_COLUMNS) if isinstance(info.context, dict) else None
        if columns is not None and self.ad_ids == _PLACEHOLDER:  # parse_prerank decoded the columns
            columns["used"] = True
            ids, bids = columns["ids"], columns["bids"]
        else:
            ids = (
                _decode(self.ad_ids, "<i8", "candidates.ad_ids").astype(np.int64)
                if isinstance(self.ad_ids, str)
                else _id_array(self.ad_ids)
            )
            bids = None
        if bids is None and self.bids is not None:
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


#: parse_prerank's context key and the string standing in for the column it decoded.
_COLUMNS = "prerank.columns"
_PLACEHOLDER = "\x00decoded"
#: Below this many ids, pydantic's own path costs about as much as the column decoder.
FAST_MIN_IDS = 256


def _plain(value: Any) -> Any:
    """A simdjson value as Python objects (a small one: the body without its id column)."""
    import simdjson

    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _decoded_columns(body: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """The body with `candidates.ad_ids` (and a JSON `bids` array) cut out, and those columns as
    arrays, decoded by simdjson straight from the JSON text with no Python object per candidate;
    None where anything is not the plain form (then pydantic parses the body as it is).

    Plain form: an object whose `candidates` object holds `ad_ids`, an array of at least
    FAST_MIN_IDS non-negative JSON integers that fit int64, with `bids` absent, null, a string or an
    array of JSON numbers, and no key twice in either object. The
    rest of the body is re-serialised (orjson) and validated by the same pydantic model, so every
    other field gets the same checks and the same errors.
    """
    try:
        import simdjson
    except ImportError:  # the column decoder is optional: pydantic parses everything
        return None
    try:
        doc = simdjson.Parser().parse(body)  # a parser per call: cheap, and safe across threads
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        cand = doc.get("candidates")
        if len(set(keys)) != len(keys) or not isinstance(cand, simdjson.Object):
            return None
        cand_keys = list(cand.keys())
        ids_json = cand.get("ad_ids")
        if len(set(cand_keys)) != len(cand_keys) or not isinstance(ids_json, simdjson.Array):
            return None
        if len(ids_json) < FAST_MIN_IDS:
            return None
        ids = np.frombuffer(ids_json.as_buffer(of_type="i"), dtype=np.int64).copy()
        bids_json = cand.get("bids")
        bids, n_bids = None, 0
        if isinstance(bids_json, simdjson.Array):
            bids = np.frombuffer(bids_json.as_buffer(of_type="d"), dtype=np.float64).copy()
            n_bids = len(bids_json)
        rest = {k: _plain(doc[k]) for k in keys if k != "candidates"}
        rest_cand = {k: _plain(cand[k]) for k in cand_keys if k not in ("ad_ids", "bids")}
        rest_cand["ad_ids"] = _PLACEHOLDER
        if "bids" in cand_keys:
            rest_cand["bids"] = None if bids is not None else _plain(bids_json)
        rest["candidates"] = rest_cand
        text = orjson.dumps(rest)
    except (ValueError, TypeError, RuntimeError, OverflowError, orjson.JSONEncodeError):
        return None  # not valid JSON, or not the plain form: pydantic says what is wrong
    # simdjson's as_buffer flattens nested arrays: the columns are plain only if the body holds no
    # '[' beyond the rest's own and one per decoded column (a '[' in a string, or escaped as
    # \u005b, differs between the two and also falls back).
    if body.count(b"[") != text.count(b"[") + 1 + (bids is not None):
        return None
    if len(ids) != len(ids_json) or (bids is not None and len(bids) != n_bids):
        return None
    if ids.min() < 0:  # pydantic's path names each negative id
        return None
    return text, {"ids": ids, "bids": bids, "used": False}


def parse_prerank(body: bytes) -> PrerankRequest:
    """A /prerank body as a checked `PrerankRequest`, exactly as `PrerankRequest.model_validate_json`
    would give it (same values, same errors), faster for large JSON id columns.

    pydantic turns a JSON array of 10,000 ids into 10,000 Python ints before numpy sees them (0.7 ms
    per request on a 2-core Xeon VM, results/perf/vs-preissue/intel-run/); simdjson decodes the
    column into an int64 array directly (0.14 ms). Any body that is not in the plain form goes
    through pydantic unchanged.

    Raises:
        pydantic.ValidationError: the body is not valid JSON or a field is invalid.
    """
    decoded = _decoded_columns(body) if len(body) > 4 * FAST_MIN_IDS else None
    if decoded is None:
        return PrerankRequest.model_validate_json(body)
    text, columns = decoded
    parsed = PrerankRequest.model_validate_json(text, context={_COLUMNS: columns})
    if not columns["used"]:  # the placeholder did not land in candidates.ad_ids: cannot happen for
        return PrerankRequest.model_validate_json(body)  # the plain form, but never trust it
    return parsed
