"""What tracing costs on the request path: p50 of POST /prerank, in process, in three modes.

* `no_tracing_code`: the stage-span hook removed (the baseline; what remains is the middleware's
  one `if tracing.enabled` test);
* `off`: the shipped default (PRERANK_TRACING=none);
* `on`: spans for the request and every stage, into an in-memory exporter.

Rounds of each mode are interleaved so drift affects all three alike. The app runs in-process
(FastAPI's TestClient), so HTTP parsing by a server is not in the numbers: the ratio is an upper
bound on the relative cost over a real socket.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.provenance import code_version, machine

__all__ = ["measure_overhead"]


def measure_overhead(store: Path, candidates: int = 1000, rounds: int = 30, per_round: int = 50) -> dict[str, Any]:
    """p50 / p99 (ms) per mode over `rounds` x `per_round` requests each, and off / baseline."""
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import service.observability as obs
    import service.routes as routes
    from service.app import create_app
    from service.config import Settings

    settings = Settings(store=f"local:{store}", poll_seconds=3600, log_sample_rate=0.0)
    exporter = InMemorySpanExporter()
    apps = {
        "no_tracing_code": create_app(settings),
        "off": create_app(settings),
        "on": create_app(settings, obs.Tracing(exporter)),
    }
    clients = {name: TestClient(app).__enter__() for name, app in apps.items()}
    version = clients["off"].app.state.scorer.live  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    ads = [int(a) for a in rng.choice(version.index.ad_ids, candidates, replace=False)]
    body = {"user": {"id": version.index.user_ids[0]}, "candidates": {"ad_ids": ads}, "top_k": 100}
    real_record = routes.record_stages
    times: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for _ in range(rounds):
            for name, client in clients.items():
                if name == "no_tracing_code":  # the request path with no tracing hooks at all
                    routes.record_stages = lambda *_: None  # type: ignore[assignment]
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    client.post("/prerank", json=body)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                routes.record_stages = real_record
                exporter.clear()
    finally:
        routes.record_stages = real_record
        for client in clients.values():
            client.__exit__(None, None, None)
    summary = {
        name: {"p50_ms": statistics.median(t), "p99_ms": float(np.percentile(t, 99)), "requests": len(t)}
        for name, t in times.items()
    }
    base = summary["no_tracing_code"]["p50_ms"]
    return {
        "machine": machine(),
        "code_version": code_version(),
        "candidates": candidates,
        "modes": summary,
        "off_over_baseline_p50": summary["off"]["p50_ms"] / base,
        "on_over_baseline_p50": summary["on"]["p50_ms"] / base,
    }
