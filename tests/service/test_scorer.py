"""The scorer: chunked gather + score, id lookups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    app = create_app(Settings(store=f"local:{store}", max_candidates=500, max_body_bytes=20_000, poll_seconds=60))
    with TestClient(app) as c:
        yield c


def test_chunked_gather_and_score_equals_one_pass(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.scorer as scorer_module

    scorer = client.app.state.scorer  # type: ignore[attr-defined]
    version = scorer.live
    user = scorer.encode_user(version, version.index.users.take(np.array([3])))
    rows = np.random.default_rng(0).permutation(len(version.index.ad_ids))
    with torch.no_grad():
        one_pass = version.bundle.model.score(user, version.rows.take(torch.from_numpy(rows)))
    monkeypatch.setattr(scorer_module, "MIN_CHUNK_ROWS", 7)
    monkeypatch.setattr(scorer_module, "CHUNK_BYTES", 7 * version.rows.row_bytes)
    timings: dict[str, float] = {}
    chunked = scorer.score_rows(version, user, rows, timings)
    torch.testing.assert_close(chunked, one_pass, rtol=0, atol=1e-6)
    assert timings["gather"] > 0 and timings["score"] > 0


@pytest.mark.parametrize("offset", [0, 2**62])  # dense ids: direct table; huge ids: sorted binary search
def test_id_lookup_both_paths(store: Path, offset: int) -> None:
    from service.store import build_version, load_version

    live = load_version(store / "versions" / "v000001")
    index = live.index
    index.ad_ids = index.ad_ids + offset
    version = build_version(live.bundle, index)
    assert (version.ranked.table is None) == (offset > 0)
    rng = np.random.default_rng(0)
    asked = np.concatenate([index.ad_ids[rng.permutation(len(index.ad_ids))[:50]], [offset + 10**9, offset + 123457]])
    rows, known = version.lookup(asked)
    assert known.tolist() == [True] * 50 + [False, False]
    np.testing.assert_array_equal(index.ad_ids[rows], asked[:50])


def test_top_k_under_ties_is_the_prefix_of_the_full_stable_order(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    """Bids of 0 give many equal eCPMs: the partial sort must return exactly the first k of the
    full stable order (ties kept in candidate order)."""
    ads = [int(a) for a in tiny.ad_ids[:100]]
    bids = [0.0] * 60 + [1.0] * 40  # 60 ties at eCPM 0
    body = {"user": {"id": "2"}, "candidates": {"ad_ids": ads, "bids": bids}}
    full = client.post("/prerank", json=body).json()
    assert full["ecpm"][-60:] == [0.0] * 60
    assert full["ad_ids"][-60:] == ads[:60]  # the tied ones in the order they were sent
    for k in (1, 39, 40, 41, 70, 99):
        top = client.post("/prerank", json={**body, "top_k": k}).json()
        assert top["ad_ids"] == full["ad_ids"][:k], k
