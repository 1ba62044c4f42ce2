"""Cross-request micro-batching of the user tower (service/batching.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from models.features import Features, Jagged
from service.app import create_app
from service.batching import UserTowerBatcher, collate
from service.config import Settings
from service.store import ServingVersion, load_version


def _batches() -> tuple[float, float]:
    """(user-tower calls, requests encoded) by batchers in this process so far."""
    count = REGISTRY.get_sample_value("prerank_user_tower_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("prerank_user_tower_batch_size_sum") or 0.0
    return count, total


@pytest.fixture(scope="module")
def version(store: Path) -> ServingVersion:
    return load_version(store / "versions" / "v000001")


def _user(version: ServingVersion, row: int) -> Features:
    return version.index.users.take(np.array([row]))


def _concurrently(n_threads: int, work: Callable[[int], None]) -> None:
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def test_collate_concatenates_rows_and_shifts_sequence_offsets() -> None:
    a: Features = {"u": torch.tensor([3]), "h": Jagged(torch.tensor([5, 6]), torch.tensor([0]))}
    b: Features = {"u": torch.tensor([4, 7]), "h": Jagged(torch.tensor([8, 9, 1]), torch.tensor([0, 0]))}
    c: Features = {"u": torch.tensor([2]), "h": Jagged(torch.zeros(0, dtype=torch.int64), torch.tensor([0]))}
    out = collate([a, b, c])
    assert out["u"].tolist() == [3, 4, 7, 2]
    seq = out["h"]
    assert isinstance(seq, Jagged)
    assert seq.values.tolist() == [5, 6, 8, 9, 1]
    assert seq.offsets.tolist() == [0, 2, 2, 5]  # b's first row is empty, c's starts at the end


def test_batched_users_equal_one_at_a_time(version: ServingVersion) -> None:
    model = version.bundle.model
    n_users = min(48, len(version.index.user_ids))
    with torch.inference_mode():
        alone = [model.encode_user(_user(version, r)) for r in range(n_users)]
    batcher = UserTowerBatcher(max_batch=8, window_us=2000)
    got: dict[int, torch.Tensor] = {}
    calls_before, encoded_before = _batches()
    try:

        def work(i: int) -> None:
            for r in range(i, n_users, 8):
                got[r] = batcher.encode(version, _user(version, r))

        _concurrently(8, work)
    finally:
        batcher.close()
    calls, encoded = (x - y for x, y in zip(_batches(), (calls_before, encoded_before), strict=True))
    assert encoded == n_users
    assert calls < n_users / 2, f"{n_users} requests took {calls:.0f} calls: batches did not form"
    for r in range(n_users):
        assert got[r].shape == alone[r].shape
        torch.testing.assert_close(got[r], alone[r], rtol=1e-5, atol=1e-6)


def test_a_batch_spanning_a_swap_encodes_each_request_with_its_own_version(store: Path) -> None:
    old = load_version(store / "versions" / "v000001")
    new = load_version(store / "versions" / "v000001")
    with torch.no_grad():
        for p in new.bundle.model.parameters():
            p.add_(0.05)
    batcher = UserTowerBatcher(max_batch=16, window_us=5000)
    got: dict[int, torch.Tensor] = {}
    try:
        _concurrently(12, lambda i: got.__setitem__(i, batcher.encode(new if i % 2 else old, _user(old, i))))
    finally:
        batcher.close()
    with torch.inference_mode():
        for i, out in got.items():
            want = (new if i % 2 else old).bundle.model.encode_user(_user(old, i))
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        # the two versions disagree, so a request encoded by the other one would have failed above
        assert not torch.allclose(new.bundle.model.encode_user(_user(old, 0)), got[0], atol=1e-3)


def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on(store: Path, version: ServingVersion) -> None:
    broken = load_version(store / "versions" / "v000001")

    def fail(feats: Features) -> torch.Tensor:
        raise RuntimeError("tower failed")

    broken.bundle.model.encode_user = fail  # type: ignore[method-assign,assignment]
    batcher = UserTowerBatcher(max_batch=4, window_us=1000)
    try:
        failures: list[str] = []

        def work(i: int) -> None:
            try:
                batcher.encode(broken, _user(version, i))
            except RuntimeError as exc:
                failures.append(str(exc))

        _concurrently(4, work)
        assert failures == ["tower failed"] * 4
        out = batcher.encode(version, _user(version, 0))  # the worker still answers
        with torch.inference_mode():
            torch.testing.assert_close(out, version.bundle.model.encode_user(_user(version, 0)))
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.encode(version, _user(version, 0))


def test_a_lone_request_does_not_wait_for_the_window(version: ServingVersion) -> None:
    """window 0: the worker takes what is queued and never waits, so one request alone is not
    held back (a 50 ms window would show up in every call)."""
    import time

    batcher = UserTowerBatcher(max_batch=64, window_us=0)
    try:
        batcher.encode(version, _user(version, 0))
        t0 = time.perf_counter()
        for r in range(20):
            batcher.encode(version, _user(version, r))
        per_call = (time.perf_counter() - t0) / 20
    finally:
        batcher.close()
    assert per_call < 0.02


@pytest.fixture(scope="module")
def clients(store: Path) -> Iterator[tuple[TestClient, TestClient]]:
    common = {"store": f"local:{store}", "poll_seconds": 60, "max_concurrency": 8}
    plain = create_app(Settings(**common))  # type: ignore[arg-type]
    batched = create_app(Settings(**common, user_batch=8, user_batch_window_us=1000))  # type: ignore[arg-type]
    with TestClient(plain) as a, TestClient(batched) as b:
        yield a, b


def test_http_scores_with_batching_equal_scores_without(clients: tuple[TestClient, TestClient], tiny) -> None:  # type: ignore[no-untyped-def]
    plain, batched = clients
    assert batched.app.state.scorer.batcher is not None  # type: ignore[attr-defined]
    ads = [int(a) for a in tiny.ad_ids[:200]]
    bodies = [{"user": {"id": str(u)}, "candidates": {"ad_ids": ads}} for u in range(16)]
    want = [plain.post("/prerank", json=b).json() for b in bodies]
    got: dict[int, dict[str, Any]] = {}

    def work(i: int) -> None:
        for j in range(i, 16, 8):
            got[j] = batched.post("/prerank", json=bodies[j]).json()

    _concurrently(8, work)
    for j, w in enumerate(want):
        assert got[j]["ad_ids"] == w["ad_ids"]
        np.testing.assert_allclose(got[j]["pctr"], w["pctr"], rtol=1e-5, atol=1e-6)
    metrics = batched.get("/metrics").text
    assert "prerank_user_tower_batch_size_bucket" in metrics
