"""A/B arms and shadow scoring on one replica (configs: storage.experiments).

`ArmSet` is what the scorer reads per request: the experiment and, per arm, the version that
scores it (None: the live version). `Shadow` scores a sample of live requests with a candidate
version in a worker thread at the lowest CPU priority, behind a bounded queue that drops when
full, so a slow candidate never delays a response; it records score deltas, top-k overlap and
its latency as metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

from service.schemas import PrerankRequest
from service.scorer import Scorer, ScoreResult
from service.store import ServingVersion
from storage.experiments import Experiment, ShadowConfig, assign_arm

__all__ = ["ArmSet", "Shadow", "observe_arm", "overlap_and_delta"]

log = logging.getLogger(__name__)

ARM_REQUESTS = Counter(
    "prerank_experiment_requests_total", "/prerank requests by experiment arm", ["experiment", "arm"]
)
ARM_LATENCY = Histogram(
    "prerank_experiment_scoring_duration_seconds",
    "scoring time of /prerank by experiment arm",
    ["experiment", "arm"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1),
)
SHADOW_REQUESTS = Counter(
    "prerank_shadow_requests_total", "live requests offered to the shadow, by outcome", ["outcome"]
)
SHADOW_LATENCY = Histogram(
    "prerank_shadow_scoring_duration_seconds",
    "time the shadow candidate took per request (off the response path)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SHADOW_OVERLAP = Histogram(
    "prerank_shadow_topk_overlap",
    "fraction of the live top-k that the shadow's top-k shares",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
SHADOW_DELTA = Histogram(
    "prerank_shadow_pctr_abs_delta",
    "mean |shadow pCTR - live pCTR| over a request's common ads",
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
#: Top-k compared when the request asks for all candidates.
SHADOW_TOP_K = 100


@dataclass(frozen=True)
class ArmSet:
    """A running experiment: the versions of its arms (None: the live version)."""

    experiment: Experiment
    versions: tuple[ServingVersion | None, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, experiment: Experiment, versions: tuple[ServingVersion | None, ...]) -> ArmSet:
        return cls(experiment, versions, tuple(experiment.bounds()))

    def pick(self, user_id: str) -> tuple[str, ServingVersion | None]:
        """The user's arm name and its version (sticky: a function of the salt and the id)."""
        i = assign_arm(self.experiment, user_id, list(self.bounds))
        return self.experiment.arms[i].name, self.versions[i]


def observe_arm(result: ScoreResult) -> None:
    """The arm's request count and scoring time."""
    labels = (result.experiment or "", result.arm or "")
    ARM_REQUESTS.labels(*labels).inc()
    ARM_LATENCY.labels(*labels).observe(sum(result.timings_ms.values()) / 1e3)


def overlap_and_delta(live: ScoreResult, shadow: ScoreResult, top_k: int | None) -> tuple[float, float]:
    """(share of the live top-k in the shadow's top-k, mean |pCTR difference| on common ads)."""
    k = min(top_k or SHADOW_TOP_K, len(live.ad_ids), len(shadow.ad_ids))
    overlap = len(np.intersect1d(live.ad_ids[:k], shadow.ad_ids[:k])) / k if k else 1.0
    common, li, si = np.intersect1d(live.ad_ids, shadow.ad_ids, return_indices=True)
    delta = float(np.abs(live.pctr[li] - shadow.pctr[si]).mean()) if len(common) else 0.0
    return overlap, delta


class Shadow:
    """Scores sampled live requests with a candidate version, off the response path.

    Args:
        scorer: the replica's scorer (its scoring code, not its live version).
        version: the candidate (None: the live version).
        config: the sample rate.
        queue_size: requests waiting at most; an offer to a full queue is dropped.
    """

    def __init__(
        self, scorer: Scorer, version: ServingVersion | None, config: ShadowConfig, queue_size: int = 4
    ) -> None:
        self.scorer, self.version, self.config = scorer, version, config
        self._queue: queue.Queue[tuple[PrerankRequest, ScoreResult] | None] = queue.Queue(maxsize=queue_size)
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name="prerank-shadow", daemon=True)
        self._thread.start()

    def offer(self, request: PrerankRequest, live: ScoreResult) -> None:
        """Never blocks: sampled out, queued, or dropped when the candidate is behind."""
        if self._rng.random() >= self.config.sample:
            return
        try:
            self._queue.put_nowait((request, live))
        except queue.Full:
            SHADOW_REQUESTS.labels("dropped").inc()

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # lowest CPU priority for this thread (Linux)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while (item := self._queue.get()) is not None:
            request, live = item
            try:
                started = time.perf_counter()
                shadow = self.scorer.prerank(request, self.version)
                SHADOW_LATENCY.observe(time.perf_counter() - started)
                overlap, delta = overlap_and_delta(live, shadow, request.top_k)
                SHADOW_OVERLAP.observe(overlap)
                SHADOW_DELTA.observe(delta)
                SHADOW_REQUESTS.labels("scored").inc()
            except Exception:  # the candidate's failure is its own; live traffic goes on
                SHADOW_REQUESTS.labels("failed").inc()
                log.exception("shadow scoring failed", extra={"event": "shadow_error"})

    def close(self) -> None:
        """Stops the worker after the request in hand (queued ones are dropped)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=10)
