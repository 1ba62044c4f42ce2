"""Overload safety: bounded concurrency and queue, fast 503 + Retry-After, deadlines (504)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.admission import deadline_from
from service.app import create_app
from service.config import Settings
from tests.service.test_api import _samples

BODY = {"user": {"id": "3"}, "candidates": {"ad_ids": list(range(1, 30))}}
SLOW_S = 0.6


@pytest.fixture
def slow_client(store: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    max_queue = getattr(request, "param", 0)
    settings = Settings(store=f"local:{store}", poll_seconds=60, max_concurrency=1, max_queue=max_queue)
    with TestClient(create_app(settings)) as client:
        _slow_down(client)
        yield client


def _slow_down(client: TestClient) -> None:
    """Every request holds its scoring slot SLOW_S longer."""
    scorer = client.app.state.scorer  # type: ignore[attr-defined]
    real = scorer.prerank

    def slow(parsed: Any) -> Any:
        time.sleep(SLOW_S)
        return real(parsed)

    scorer.prerank = slow


def _in_background(client: TestClient, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(client.post("/prerank", json=BODY, **kwargs)))
    thread.start()
    time.sleep(0.15)  # it holds the only slot now
    return thread, out


def test_over_capacity_is_shed_fast_with_retry_after(slow_client: TestClient) -> None:
    before = _samples(slow_client)
    thread, first = _in_background(slow_client)
    t0 = time.perf_counter()
    shed = slow_client.post("/prerank", json=BODY)
    elapsed = time.perf_counter() - t0
    thread.join()
    assert first[0].status_code == 200
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert shed.json()["detail"][0]["type"] == "overloaded"
    assert elapsed < 0.1  # answered at once, not after the slow request (0.6 s)
    after = _samples(slow_client)
    assert after[("prerank_requests_shed_total", ())] - before.get(("prerank_requests_shed_total", ()), 0) == 1


@pytest.mark.parametrize("slow_client", [4], indirect=True)
def test_a_queued_request_whose_deadline_passes_is_abandoned(slow_client: TestClient) -> None:
    before = _samples(slow_client)
    thread, first = _in_background(slow_client)
    t0 = time.perf_counter()
    expired = slow_client.post("/prerank", json=BODY, headers={"X-Request-Timeout-Ms": "150"})
    elapsed = time.perf_counter() - t0
    waited = slow_client.post("/prerank", json=BODY, headers={"X-Request-Timeout-Ms": "5000"})
    thread.join()
    assert first[0].status_code == 200 and waited.status_code == 200  # a long enough budget waits its turn
    assert expired.status_code == 504 and expired.json()["detail"][0]["type"] == "deadline_exceeded"
    assert 0.13 < elapsed < 0.4  # abandoned at its deadline, not after the slow request
    after = _samples(slow_client)
    key = ("prerank_requests_deadline_expired_total", ())
    assert after[key] - before.get(key, 0) == 1 and after[("prerank_requests_queued", ())] == 0


def test_deadline_header_parsing() -> None:
    now = time.monotonic()
    assert deadline_from(None, None) is None
    assert deadline_from("250", None) == pytest.approx(now + 0.25, abs=0.05)
    assert deadline_from(None, 1000) == pytest.approx(now + 1.0, abs=0.05)
    for bad in ("abc", "-5", "0", "1e9"):  # malformed or out of range: the default applies
        assert deadline_from(bad, 1000) == pytest.approx(now + 1.0, abs=0.05), bad


def test_a_request_queued_longer_than_max_queue_ms_is_shed(store: Path) -> None:
    """The queue-time limit: a request that waited max_queue_ms for a slot is shed (503), so the
    requests that are served never wait long, whatever the queue's length."""
    settings = Settings(store=f"local:{store}", poll_seconds=60, max_concurrency=1, max_queue=8, max_queue_ms=100)
    with TestClient(create_app(settings)) as client:
        _slow_down(client)
        thread, first = _in_background(client)
        t0 = time.perf_counter()
        shed = client.post("/prerank", json=BODY)
        elapsed = time.perf_counter() - t0
        budget = client.post("/prerank", json=BODY, headers={"X-Request-Timeout-Ms": "50"})  # the shorter one wins
        thread.join()
    assert first[0].status_code == 200
    assert shed.status_code == 503 and "queued 100 ms" in shed.json()["detail"][0]["msg"]
    assert 0.09 < elapsed < 0.4  # shed after its 100 ms in the queue, not after the slow request
    assert budget.status_code == 504  # its own deadline came first: 504, not a shed
