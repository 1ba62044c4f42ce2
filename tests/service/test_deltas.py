"""Ad deltas and pauses through a real Redis, on two real replicas; catch-up; model mismatch."""

from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import pytest
import redis
import torch

from models.artifact import ArtifactError
from offline.data import Dataset
from offline.data.dataset import concat_tables
from offline.delta import export_delta, live_ads, pause_ads
from offline.export import export
from prerank.cli import main
from service.schemas import PrerankRequest
from service.scorer import Scorer
from service.store import IdIndex, RedisStore, load_version
from storage import RedisKeys
from storage.deltas import AdDelta, DeltaRefused
from tests.conftest import serve, wait_for

pytestmark = pytest.mark.integration

NEW_IDS = [900_001, 900_002, 900_003]


def changed(tiny: Dataset) -> tuple[Dataset, dict[str, list[int]]]:
    """tiny's ads with 4 features changed, 4 bids changed, 4 ads removed and 3 new ones."""
    ids = tiny.ad_ids
    ads = tiny.ads.take_rows(np.arange(tiny.ads.n_rows))
    ads.sparse["category"] = ads.sparse["category"].copy()
    ads.sparse["category"][:4] = (ads.sparse["category"][:4] % 20) + 1  # other categories
    bids = tiny.ad_bids.astype(np.float32).copy()
    bids[4:8] *= 3.0
    keep = np.ones(len(ids), bool)
    keep[8:12] = False
    new = ads.take_rows(np.array([20, 21, 22]))
    out = dataclasses.replace(
        tiny,
        ad_ids=np.concatenate([ids[keep], NEW_IDS]),
        ads=concat_tables([ads.take_rows(np.flatnonzero(keep)), new]),
        ad_bids=np.concatenate([bids[keep], [1.5, 2.5, 3.5]]).astype(np.float32),
    )
    what = {
        "features": ids[:4].tolist(),
        "bids": ids[4:8].tolist(),
        "removed": ids[8:12].tolist(),
        "new": NEW_IDS,
    }
    return out, what


def scores(url: str, ad_ids: list[int]) -> dict[str, object]:
    body = {"user": {"id": "4"}, "candidates": {"ad_ids": ad_ids}}
    r = httpx.post(url + "/prerank", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_delta_reaches_two_replicas_and_equals_a_full_export(tiny, tiny_hit, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = export(tiny_hit.artifact, tiny, redis_server.url)
    modified, what = changed(tiny)
    asked = [*modified.ad_ids.tolist(), *what["removed"]]
    with serve(redis_server.url, poll="30") as a, serve(redis_server.url, poll="30") as b:
        before = scores(a, asked)
        assert before["delta_seq"] == 0
        done = export_delta(tiny_hit.artifact, modified, redis_server.url)
        assert (done["upserts"], done["removals"], done["bid_changes"]) == (7, 4, 4)  # 4 changed + 3 new
        seq = done["seq"]
        # the 30 s poll is far: the events channel carries the delta to both replicas
        assert wait_for(lambda: all(scores(u, asked[:1])["delta_seq"] == seq for u in (a, b)), timeout=5)
        after = [scores(u, asked) for u in (a, b)]
        again = export_delta(tiny_hit.artifact, modified, redis_server.url)  # the chain is replayed: no change left
    assert again["seq"] is None and again["chain_before"] == 1
    for body in after:
        assert body["index_version"] == base["version"]
        assert sorted(body["unknown_ad_ids"]) == sorted(what["removed"])
        assert set(what["new"]) <= set(body["ad_ids"])
    assert after[0]["ad_ids"] == after[1]["ad_ids"] and after[0]["pctr"] == after[1]["pctr"]
    old = dict(zip(before["ad_ids"], before["pctr"], strict=True))  # type: ignore[arg-type]
    new = dict(zip(after[0]["ad_ids"], after[0]["pctr"], strict=True))  # type: ignore[arg-type]
    assert all(abs(old[i] - new[i]) > 1e-7 for i in what["features"])  # re-encoded with their new features
    old_ecpm = dict(zip(before["ad_ids"], before["ecpm"], strict=True))  # type: ignore[arg-type]
    new_ecpm = dict(zip(after[0]["ad_ids"], after[0]["ecpm"], strict=True))  # type: ignore[arg-type]
    for i in what["bids"]:
        assert new_ecpm[i] == pytest.approx(3.0 * old_ecpm[i], rel=1e-5)

    # Compaction: a full export of the same ads scores every ad as base + delta did (within 1e-6).
    export(tiny_hit.artifact, modified, f"local:{tmp_path / 'full'}")
    full = load_version(tmp_path / "full" / "versions" / "v000001")
    request = PrerankRequest.model_validate({"user": {"id": "4"}, "candidates": {"ad_ids": asked}})
    scorer = Scorer()
    scorer.swap(full)
    result = scorer.prerank(request)
    reference = dict(zip(result.ad_ids.tolist(), result.pctr.tolist(), strict=True))
    assert set(reference) == set(new)
    assert max(abs(reference[i] - new[i]) for i in new) < 1e-6
    assert sorted(result.unknown_ad_ids.tolist()) == sorted(what["removed"])


def test_pause_is_seen_by_every_replica_and_survives_a_full_export(tiny, tiny_hit, redis_server, capsys) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    ads = tiny.ad_ids[:30].tolist()
    token = {"PRERANK_ADMIN_TOKEN": "t0ken"}
    with serve(redis_server.url, poll="30", env=token) as a, serve(redis_server.url, poll="30") as b:
        assert main(["ads", "pause", str(ads[0]), str(ads[1]), "--store", redis_server.url]) == 0
        assert "paused 2 ads" in capsys.readouterr().out
        assert wait_for(lambda: all(ads[0] in scores(u, ads)["unknown_ad_ids"] for u in (a, b)), timeout=2)
        for u in (a, b):
            body = scores(u, ads)
            assert sorted(body["unknown_ad_ids"]) == sorted(ads[:2]) and not set(ads[:2]) & set(body["ad_ids"])
        # A full export starts a new version; the pause holds (it belongs to the store, not the version).
        v2 = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
        assert wait_for(lambda: scores(b, ads)["index_version"] == v2, timeout=5)
        assert sorted(scores(b, ads)["unknown_ad_ids"]) == sorted(ads[:2])
        # Resume through one replica's admin API: the other follows.
        auth = {"Authorization": "Bearer t0ken"}
        r = httpx.post(a + "/admin/ads/resume", json={"ad_ids": [ads[0]]}, headers=auth)
        assert r.status_code == 200 and r.json()["applied_here"], r.text
        assert scores(a, ads)["unknown_ad_ids"] == [ads[1]]
        assert wait_for(lambda: scores(b, ads)["unknown_ad_ids"] == [ads[1]], timeout=2)
        bad = httpx.post(a + "/admin/ads/pause", json={"ad_ids": [-1]}, headers=auth)
        assert bad.status_code == 422 and "ad_ids" in bad.text
        # A replica that starts now catches up before it is ready: base + pauses.
        with serve(redis_server.url, poll="30") as c:
            assert scores(c, ads)["unknown_ad_ids"] == [ads[1]]
    assert main(["ads", "list", "--store", redis_server.url]) == 0
    assert capsys.readouterr().out.startswith(f"1 paused (change 2): {ads[1]}")


def test_a_delta_from_another_model_is_refused(tiny, tiny_hit, tiny_dssm, redis_server, capsys) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    modified, _ = changed(tiny)
    with pytest.raises(DeltaRefused, match="a delta must come from the live model"):
        export_delta(tiny_dssm.artifact, modified, redis_server.url)
    # and the store-side check holds even for a hand-made delta that claims the wrong model
    live = live_ads(redis.Redis.from_url(redis_server.url), RedisKeys())
    forged = AdDelta(live.version, "dssm-somebody-else", remove_ids=np.array([int(tiny.ad_ids[0])]))
    from storage.deltas import publish_delta

    with pytest.raises(DeltaRefused, match="was built by model"):
        publish_delta(redis.Redis.from_url(redis_server.url), RedisKeys(), forged)
    argv = ["export", str(tiny_dssm.artifact), "--delta", "--store", redis_server.url, "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a delta must come from the live model" in err
    assert main(["ads", "pause", "--store", redis_server.url]) == 2
    assert main(["ads", "pause", "12", "--store", "local:/nonexistent"]) == 2


def test_a_replica_catches_up_on_the_chain_after_a_restart(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    modified, what = changed(tiny)
    seq = export_delta(tiny_hit.artifact, modified, redis_server.url)["seq"]
    pause_seq = pause_ads(redis_server.url, what["new"][:1])
    asked = modified.ad_ids.tolist()
    with serve(redis_server.url, poll="0.3") as url:  # started after both changes
        first = scores(url, asked)
        assert first["delta_seq"] == pause_seq > seq
        assert first["unknown_ad_ids"] == what["new"][:1]
        redis_server.stop()  # Redis away: keeps serving base + chain from memory
        assert wait_for(lambda: httpx.get(url + "/readyz").json()["status"] == "degraded")
        assert scores(url, asked)["ad_ids"] == first["ad_ids"]


def test_copy_on_write_leaves_the_older_version_untouched(tiny, tiny_hit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, f"local:{tmp_path}")
    v = load_version(tmp_path / "versions" / "v000001")
    ids = tiny.ad_ids
    rows = v.rows
    extra = len(v.storage) + 5  # more rows than the buffer holds: it grows once
    new_ids = np.arange(10**6, 10**6 + extra)
    delta = AdDelta(
        v.version,
        v.model_version,
        upsert_ids=new_ids,
        upsert_rows=type(rows)(rows.vectors[torch.from_numpy(np.arange(extra) % len(rows))].clone()),
        upsert_bids=np.ones(extra, np.float32),
        upsert_hashes=np.zeros(extra, np.uint64),
        remove_ids=ids[:3],
        bid_ids=ids[3:5],
        bid_values=np.array([7.0, 8.0], np.float32),
        seq=4,
    )
    w = v.with_delta(AdDelta.from_bytes(delta.to_bytes(), 4))
    assert w.n_rows == v.n_rows + extra and w.delta_seq == 4
    assert v.lookup(ids[:3])[1].all() and not w.lookup(ids[:3])[1].any()  # the old version still has them
    assert v.bids[v.lookup(ids[3:4])[0]][0] != 7.0 and w.bids[w.lookup(ids[3:4])[0]][0] == 7.0
    torch.testing.assert_close(v.rows.vectors, rows.vectors)
    p = w.with_paused(5, new_ids[:2])
    assert not p.lookup(new_ids[:2])[1].any() and w.lookup(new_ids[:2])[1].all() and p.delta_seq == 5
    assert set(p.live_ids.tolist()) == set(ids[3:].tolist()) | set(new_ids[2:].tolist())
    with pytest.raises(ArtifactError, match="is for"):
        v.with_delta(dataclasses.replace(delta, model_version="other"))
    index = IdIndex.build(np.array([5, 2**40, 3]), np.array([0, 1, 2]))
    assert index.table is None and index.lookup(np.array([3, 4, 2**40]))[0].tolist() == [2, 1]


def test_redis_store_reads_deltas_in_order(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    version = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    seqs = [pause_ads(redis_server.url, [int(tiny.ad_ids[0])])]
    modified, _ = changed(tiny)
    seqs.append(export_delta(tiny_hit.artifact, modified, redis_server.url)["seq"])
    store = RedisStore(redis_server.url)
    chain = store.deltas(version)
    assert [d.seq for _, d in chain] == seqs[1:] and store.deltas(version, chain[-1][0]) == []
    assert store.paused()[0] == seqs[0] and store.paused()[1].tolist() == [int(tiny.ad_ids[0])]
