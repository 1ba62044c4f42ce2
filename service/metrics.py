"""Prometheus metrics: HTTP traffic, per-stage timings, candidates, versions and store events.

With several server workers, set PROMETHEUS_MULTIPROC_DIR (an empty directory) before start;
every worker writes there and /metrics aggregates them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

__all__ = ["child", "mark_process_dead", "metrics_payload", "observe_result", "record_version"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05)

REQUESTS = Counter("prerank_http_requests_total", "HTTP requests by route template and status", ["route", "status"])
IN_FLIGHT = Gauge("prerank_http_requests_in_flight", "HTTP requests being served now", multiprocess_mode="livesum")
LATENCY = Histogram(
    "prerank_http_request_duration_seconds",
    "HTTP request latency by route template and status",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
#: Upper bounds of the candidate-count label of SCORING (e.g. candidates="1000": 501-1000 candidates).
CANDIDATE_CLASSES = (100, 500, 1000, 2000, 5000, 10000, 20000)
SCORING = Histogram(
    "prerank_scoring_duration_seconds",
    "time /prerank spends parsing, scoring and ranking, by candidate-count class (upper bound)",
    ["candidates"],
    buckets=LATENCY_BUCKETS,
)
STAGES = Histogram("prerank_stage_seconds", "time per scoring stage", ["stage"], buckets=STAGE_BUCKETS)
CANDIDATES = Histogram(
    "prerank_request_candidates",
    "candidate ads per /prerank request (its _count counts requests, its _sum candidates)",
    buckets=(10, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
#: Served pCTRs observed per request (the best-ranked ones: what reaches the ranking stage).
PCTR_OBSERVED = 10
PCTR = Histogram(
    "prerank_pctr",
    f"served pCTR of the {PCTR_OBSERVED} best-ranked ads of each /prerank request (calibrated)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
)
SHED = Counter("prerank_requests_shed_total", "requests refused with 503 because every slot and the queue were full")
DEADLINE_EXPIRED = Counter(
    "prerank_requests_deadline_expired_total", "requests abandoned (504) because their deadline passed while queued"
)
USER_BATCH_SIZE = Histogram(
    "prerank_user_tower_batch_size",
    "requests whose users were encoded in one user-tower call (PRERANK_USER_BATCH)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUED = Gauge("prerank_requests_queued", "requests waiting for a scoring slot", multiprocess_mode="livesum")
UNKNOWN_ADS = Counter("prerank_unknown_ads_total", "candidate ids absent from the live index")
UNKNOWN_USERS = Counter("prerank_unknown_users_total", "requests scored with default user features")
LIVE_VERSION = Gauge(
    "prerank_live_version_info",
    "1 for the model and index version being served",
    ["model_version", "index_version"],
    multiprocess_mode="liveall",
)
INDEX_CREATED = Gauge(
    "prerank_index_created_timestamp_seconds",
    "when the live index version was exported (index age = time() - this)",
    multiprocess_mode="max",
)
INDEX_LOADED = Gauge(
    "prerank_index_loaded_timestamp_seconds", "when this process made the live version live", multiprocess_mode="max"
)
SWAPS = Counter("prerank_version_swaps_total", "model+index versions made live")
REFUSED = Counter("prerank_versions_refused_total", "published versions that failed to load")
STORE_ERRORS = Counter("prerank_store_errors_total", "failed reads of the version store")
STORE_HISTORY_LOST = Counter(
    "prerank_store_history_lost_total", "times the live version's name was found holding other content"
)
DELTAS_APPLIED = Counter("prerank_deltas_applied_total", "ad deltas applied on top of the live version")
DELTAS_REFUSED = Counter("prerank_deltas_refused_total", "ad deltas skipped as unreadable or for another model")
DELTA_SEQ = Gauge(
    "prerank_delta_seq",
    "highest store change number (delta or pause) the live version reflects",
    multiprocess_mode="min",
)
PAUSED_ADS = Gauge("prerank_paused_ads", "ads paused in the live version", multiprocess_mode="max")
FOLLOW_ERRORS = Counter("prerank_follow_errors_total", "version checks that failed unexpectedly (bugs, not outages)")


def record_version(
    model_version: str, index_version: str, previous: tuple[str, str] | None, created: str | None = None
) -> None:
    """The live version's info series, its export time (ISO 8601 UTC, from the manifest) and now."""
    if previous is not None and previous != (model_version, index_version):
        LIVE_VERSION.remove(*previous)
    LIVE_VERSION.labels(model_version, index_version).set(1)
    if created:
        with contextlib.suppress(ValueError):
            INDEX_CREATED.set(calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")))
    INDEX_LOADED.set(time.time())


def mark_process_dead() -> None:
    """Multiprocess mode: drop this worker's live gauges when it exits (no-op otherwise)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prom_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def candidate_class(n: int) -> str:
    """The smallest class bound >= n ("more" above the largest)."""
    return str(next((c for c in CANDIDATE_CLASSES if n <= c), "more"))


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set (the request path calls it per request;
    label sets are few: stages, candidate classes, route x status)."""
    return metric.labels(*labels)


def observe_result(
    timings_ms: dict[str, float], n_candidates: int, n_unknown: int, user_known: bool, pctr: Any = ()
) -> None:
    """Per-request series; `pctr` is the served pCTRs, best first (the first PCTR_OBSERVED are observed)."""
    for p in pctr[:PCTR_OBSERVED]:
        PCTR.observe(float(p))
    for stage, ms in timings_ms.items():
        child(STAGES, stage).observe(ms / 1e3)
    child(SCORING, candidate_class(n_candidates)).observe(sum(timings_ms.values()) / 1e3)
    CANDIDATES.observe(n_candidates)
    if n_unknown:
        UNKNOWN_ADS.inc(n_unknown)
    if not user_known:
        UNKNOWN_USERS.inc()


def metrics_payload() -> tuple[bytes, str]:
    """The exposition text (aggregated over workers in multiprocess mode) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
