"""Request ids, JSON logs, OpenTelemetry spans (in-memory exporter) and the metrics an operator reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from service.config import Settings
from service.observability import Tracing, configure_logging
from tests.service.test_api import _samples, sample_delta

BODY = {"user": {"id": "3"}, "candidates": {"ad_ids": list(range(1, 40))}}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def traced(store: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = Settings(store=f"local:{store}", poll_seconds=60, log_sample_rate=1.0, admin_token="t")
    with TestClient(create_app(settings, Tracing(exporter))) as client:
        yield client, exporter


def test_request_id_is_accepted_echoed_or_generated(traced) -> None:  # type: ignore[no-untyped-def]
    client, _ = traced
    r = client.post("/prerank", json=BODY, headers={"X-Request-ID": "recall-42.a:b"})
    assert r.headers["x-request-id"] == "recall-42.a:b"
    generated = client.post("/prerank", json=BODY).headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    bad = client.post("/prerank", json=BODY, headers={"X-Request-ID": "x" * 200}).headers["x-request-id"]
    assert bad != "x" * 200 and len(bad) == 32  # malformed ids are replaced, never echoed
    assert client.post("/prerank", json={**BODY, "request_id": "body-7"}).json()["request_id"] == "body-7"


def test_log_lines_are_json_and_carry_the_request_id(traced, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    client, _ = traced
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure_logging()
        client.post("/prerank", json=BODY, headers={"X-Request-ID": "trace-me"})
        client.post(
            "/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": []}}, headers={"X-Request-ID": "bad-1"}
        )
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["logger"] == "prerank.access"}
    assert access["trace-me"]["status"] == 200 and access["trace-me"]["route"] == "/prerank"
    assert access["trace-me"]["duration_ms"] > 0 and access["trace-me"]["level"] == "INFO"
    assert access["bad-1"]["status"] == 422


def test_spans_for_every_stage_continue_the_callers_trace(traced) -> None:  # type: ignore[no-untyped-def]
    client, exporter = traced
    exporter.clear()
    r = client.post("/prerank", json=BODY, headers={"traceparent": TRACEPARENT})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /prerank"]
    assert f"{server.context.trace_id:032x}" == TRACEPARENT.split("-")[1]  # the caller's trace
    assert f"{server.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    for stage in ("parse", "features", "user_tower", "gather", "score", "sort"):
        assert spans[stage].parent.span_id == server.context.span_id, stage
        assert spans[stage].end_time >= spans[stage].start_time
    assert server.attributes["http.route"] == "/prerank" and server.attributes["http.response.status_code"] == 200
    # traceparent goes out: the ranking stage continues the same trace under this server span
    assert r.headers["traceparent"] == f"00-{server.context.trace_id:032x}-{server.context.span_id:016x}-01"


def test_tracing_is_off_by_default(store: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        assert not client.app.state.tracing.enabled  # type: ignore[attr-defined]
        r = client.post("/prerank", json=BODY, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and "traceparent" not in r.headers


def test_route_labels_are_route_templates_and_operator_gauges_move(traced) -> None:  # type: ignore[no-untyped-def]
    client, _ = traced
    before = _samples(client)
    client.post("/admin/reload", headers={"authorization": "Bearer t"})
    client.get("/no/such/path")
    after = _samples(client)

    def delta(name: str, **labels: str) -> float:
        return sample_delta(before, after, name, **labels)

    assert delta("prerank_http_requests_total", route="/admin/reload", status="200") == 1
    assert delta("prerank_http_requests_total", route="unmatched", status="404") == 1
    assert after[("prerank_http_requests_in_flight", ())] == 1  # the /metrics scrape itself
    created = after[("prerank_index_created_timestamp_seconds", ())]
    loaded = after[("prerank_index_loaded_timestamp_seconds", ())]
    assert 1.7e9 < created <= loaded  # index age = time() - created
