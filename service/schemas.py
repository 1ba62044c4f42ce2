"""Request and response bodies of the HTTP API (columnar arrays: one list per column)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Candidates", "ErrorResponse", "PrerankRequest", "PrerankResponse", "RetrieveRequest", "UserInput"]

FeatureValue = str | int | float | list[str | int]
AdId = Annotated[int, Field(ge=0, le=2**63 - 1)]
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


class Candidates(BaseModel):
    """Candidate ads from recall, as parallel arrays."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ad_ids: list[AdId] = Field(..., min_length=1, description="candidate ad ids (non-negative 64-bit integers, unique)")
    bids: list[float] | None = Field(
        None, description="bid per candidate, same length as ad_ids; omitted: the ad's stored bid"
    )

    @model_validator(mode="after")
    def _check(self) -> Candidates:
        if self.bids is not None:
            if len(self.bids) != len(self.ad_ids):
                raise ValueError(
                    f"candidates.bids has {len(self.bids)} values but candidates.ad_ids has {len(self.ad_ids)}"
                )
            for i, bid in enumerate(self.bids):
                if not math.isfinite(bid) or bid < 0:
                    raise ValueError(f"candidates.bids[{i}] must be a finite number >= 0, got {bid}")
        if len(set(self.ad_ids)) != len(self.ad_ids):
            raise ValueError("candidates.ad_ids contains duplicate ids")
        return self


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
    user_known: bool = Field(..., description="false when the user was scored with default features")
    ad_ids: list[int] = Field(..., description="ranked ad ids")
    pctr: list[float] = Field(..., description="predicted click-through rate per ranked ad")
    ecpm: list[float] = Field(..., description="pctr x bid per ranked ad")
    unknown_ad_ids: list[int] = Field(..., description="candidate ids absent from the index (not ranked)")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    detail: str = Field(..., description="what was wrong, naming the field")
