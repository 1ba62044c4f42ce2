"""The scoring path: user tower once, gather candidate rows, one batched score, eCPM sort.

Plain Python and torch; no HTTP. The live `ServingVersion` is read once per request, so the
model and index that score a request always belong to the same published version.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.features import Features, FeatureSpec, Jagged, Kind
from service.schemas import PrerankRequest
from service.store import ServingVersion

__all__ = ["NotReadyError", "RequestError", "ScoreResult", "Scorer"]


class RequestError(ValueError):
    """A request the service understands but cannot serve; maps to a 4xx naming the field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field


class NotReadyError(RuntimeError):
    """No version is loaded yet (maps to 503)."""


@dataclass
class ScoreResult:
    """A ranked answer plus per-stage timings in milliseconds."""

    version: ServingVersion
    user_known: bool
    ad_ids: np.ndarray
    pctr: np.ndarray
    ecpm: np.ndarray
    unknown_ad_ids: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)

    def payload(self, request_id: str | None) -> dict[str, Any]:
        """The response body as columns (numpy arrays are serialised by orjson)."""
        return {
            "request_id": request_id,
            "model_version": self.version.model_version,
            "index_version": self.version.version,
            "user_known": self.user_known,
            "ad_ids": self.ad_ids,
            "pctr": self.pctr,
            "ecpm": self.ecpm,
            "unknown_ad_ids": self.unknown_ad_ids,
        }


def _encode_value(spec: FeatureSpec, value: object, version: ServingVersion) -> torch.Tensor | Jagged:
    where = f"user.features.{spec.name}"
    if spec.kind is Kind.DENSE:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestError(422, where, f"must be a finite number, got {value!r}")
        return torch.tensor([float(value)])
    vocab = version.bundle.vocabs[spec.vocab or ""]
    if spec.kind is Kind.SEQUENCE:
        if not isinstance(value, list):
            raise RequestError(422, where, f"must be a list of ids, got {type(value).__name__}")
        ids = torch.from_numpy(vocab.encode(value))
        ids = ids[ids > 0]  # unknown tokens carry no information in a mean pool
        return Jagged(ids, torch.zeros(1, dtype=torch.int64))
    if isinstance(value, list | float):
        raise RequestError(422, where, f"must be a single id (string or integer), got {value!r}")
    return torch.tensor([vocab.encode_one(value)])


def _default_value(spec: FeatureSpec) -> torch.Tensor | Jagged:
    if spec.kind is Kind.DENSE:
        return torch.zeros(1)
    if spec.kind is Kind.SEQUENCE:
        return Jagged(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    return torch.zeros(1, dtype=torch.int64)


class Scorer:
    """Holds the live version and scores requests against it.

    Args:
        device: torch device of the ad matrix and the model.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._live: ServingVersion | None = None
        self._swap_lock = threading.Lock()

    @property
    def live(self) -> ServingVersion | None:
        return self._live

    def swap(self, version: ServingVersion) -> ServingVersion | None:
        """Makes `version` live in one reference assignment; returns the previous one."""
        with self._swap_lock:
            previous, self._live = self._live, version
        return previous

    def user_features(self, request: PrerankRequest, version: ServingVersion) -> tuple[Features, bool]:
        """Stored features of the user (if known), overridden by the request's raw features."""
        schema = version.bundle.schema
        fields = {f.name: f for f in schema.user_fields}
        unknown = sorted(set(request.user.features) - set(fields))
        if unknown:
            raise RequestError(
                422, f"user.features.{unknown[0]}", f"not a user feature of this model; known: {sorted(fields)}"
            )
        row = version.user_rows.get(request.user.id) if request.user.id is not None else None
        known = row is not None or bool(request.user.features)
        if row is None and not request.user.features and request.unknown_user == "reject":
            raise RequestError(404, "user.id", f"user {request.user.id!r} is not in the user feature store")
        if row is not None:
            feats = version.index.users.take(np.array([row], dtype=np.int64), self.device)
        else:
            feats = {name: _default_value(spec) for name, spec in fields.items()}
        for name, value in request.user.features.items():
            feats[name] = _encode_value(fields[name], value, version)
        return feats, known

    def gather(self, version: ServingVersion, rows: np.ndarray) -> torch.Tensor:
        """Candidate rows of the ad matrix as float32/bfloat16 (int8 rows are dequantised)."""
        index = torch.from_numpy(rows).to(version.vectors.device)
        ads = version.vectors.index_select(0, index)
        if version.scales is not None:
            scales = version.scales.index_select(0, index)
            ads = ads.float() * scales.view(-1, *([1] * (ads.dim() - 1)))
        return ads

    def prerank(self, request: PrerankRequest) -> ScoreResult:
        """Scores and ranks the request's candidates by eCPM."""
        version = self._live
        if version is None:
            raise NotReadyError("no model/index version is loaded")
        t0 = time.perf_counter()
        feats, user_known = self.user_features(request, version)
        ad_ids = np.asarray(request.candidates.ad_ids, dtype=np.int64)
        rows, known = version.lookup(ad_ids)
        t1 = time.perf_counter()
        with torch.inference_mode():
            model = version.bundle.model
            user = model.encode_user(feats)
            t2 = time.perf_counter()
            ads = self.gather(version, rows)
            t3 = time.perf_counter()
            pctr = torch.sigmoid(model.score(user, ads)).cpu().numpy().astype(np.float32, copy=False)
        t4 = time.perf_counter()
        if request.candidates.bids is not None:
            bids = np.asarray(request.candidates.bids, dtype=np.float32)[known]
        else:
            bids = version.index.bids[rows]
        ecpm = pctr * bids
        known_ids = ad_ids[known]
        k = len(ecpm) if request.top_k is None else min(request.top_k, len(ecpm))
        if k < len(ecpm):
            top = np.argpartition(-ecpm, k - 1)[:k]
            order = top[np.argsort(-ecpm[top], kind="stable")]
        else:
            order = np.argsort(-ecpm, kind="stable")
        t5 = time.perf_counter()
        return ScoreResult(
            version=version,
            user_known=user_known,
            ad_ids=known_ids[order],
            pctr=pctr[order],
            ecpm=ecpm[order],
            unknown_ad_ids=ad_ids[~known],
            timings_ms={
                "features": (t1 - t0) * 1e3,
                "user_tower": (t2 - t1) * 1e3,
                "gather": (t3 - t2) * 1e3,
                "score": (t4 - t3) * 1e3,
                "sort": (t5 - t4) * 1e3,
            },
        )
