"""The per-request user feature store: packed rows in bucketed Redis hashes, read once per request
through an LRU, on a real redis-server and a real server process."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import redis

from models.tables import FeatureTable
from offline.export import export
from service.store import RedisStore
from service.users import UserStore
from storage import RedisKeys
from storage.user_features import REPLICATED_MAX_USERS, UserRowCodec, bucket_of, choose_user_store
from tests.conftest import serve, wait_for

KEYS = RedisKeys()


def _table(tiny, tiny_hit) -> FeatureTable:  # type: ignore[no-untyped-def]
    from models.artifact import load_artifact

    return tiny.users.select(load_artifact(tiny_hit.artifact).schema.user_fields)


def test_packed_rows_decode_to_the_stored_features(tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    table = _table(tiny, tiny_hit)
    codec = UserRowCodec.for_table(table)
    assert UserRowCodec.from_json(json.loads(json.dumps(codec.to_json()))) == codec
    rows = np.arange(table.n_rows)
    for row, raw in zip(rows, codec.pack(table, rows), strict=True):
        one, want = codec.unpack(raw), table.take_rows(np.array([row]))
        assert one.sparse.keys() == want.sparse.keys() and one.sequences.keys() == want.sequences.keys()
        for name in want.sparse:
            assert one.sparse[name].tolist() == want.sparse[name].tolist()
        for name in want.dense:
            assert one.dense[name].tolist() == pytest.approx(want.dense[name].tolist())
        for name in want.sequences:
            assert one.sequences[name][0].tolist() == want.sequences[name][0].tolist()
    raw = codec.pack(table, np.array([0]))[0]
    for damaged in (raw[:-1], raw + b"\0", raw[:3]):
        with pytest.raises(ValueError, match="user row"):
            codec.unpack(damaged)
    narrow = FeatureTable(
        2, {"u": np.array([1, 30_000])}, sequences={"h": (np.array([5, 70_000]), np.array([0, 1, 2]))}
    )
    assert UserRowCodec.for_table(narrow).fixed == (("u", "sparse", "<i2"),)
    assert UserRowCodec.for_table(narrow).sequences == (("h", "<i4"),)
    wide = FeatureTable(2, {"u": np.array([1, 2**40])})  # ids past int32 get 8 bytes
    assert UserRowCodec.for_table(wide).fixed == (("u", "sparse", "<i8"),)
    assert UserRowCodec.for_table(wide).unpack(UserRowCodec.for_table(wide).pack(wide, np.array([1]))[0]).sparse[
        "u"
    ].tolist() == [2**40]


def test_auto_mode_switches_at_the_documented_threshold() -> None:
    assert choose_user_store("auto", REPLICATED_MAX_USERS) == "replicated"
    assert choose_user_store("auto", REPLICATED_MAX_USERS + 1) == "per-request"
    assert choose_user_store("replicated", 10**9) == "replicated"
    with pytest.raises(ValueError, match="auto, replicated or per-request"):
        choose_user_store("sometimes", 1)


@pytest.mark.integration
def test_per_request_version_serves_the_replicated_scores_from_redis(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    replicated = export(tiny_hit.artifact, tiny, url, users="replicated")
    assert replicated["user_store"] == {"mode": "replicated", "n_users": len(tiny.user_keys)}
    users = [str(u) for u in tiny.user_keys[:12]]
    body = {"candidates": {"ad_ids": tiny.ad_ids[:50].tolist()}}
    with serve(url, poll="1", env={"PRERANK_ONLINE_USERS": "false"}) as server:
        want = {u: httpx.post(server + "/prerank", json={**body, "user": {"id": u}}).json() for u in users}
        manifest = export(tiny_hit.artifact, tiny, url, users="per-request")
        version = manifest["version"]
        block = manifest["user_store"]
        assert block["mode"] == "per-request" and block["n_users"] == len(tiny.user_keys)
        assert {f["path"] for f in manifest["files"]}.isdisjoint({"users.safetensors", "user_ids.json"})
        client = redis.Redis.from_url(url)
        bucket_keys = list(client.scan_iter(match=f"prerank:version:{version}:users:*"))
        assert 0 < len(bucket_keys) <= block["buckets"]
        assert sum(client.hlen(k) for k in bucket_keys) == len(tiny.user_keys)
        assert 0 < block["bytes_per_user"] < 400 and manifest["redis_bytes"] > block["redis_bytes"]
        u0 = users[0]
        assert client.hexists(KEYS.user_bucket(version, bucket_of(u0, block["buckets"])), u0)
        assert wait_for(lambda: httpx.get(server + "/readyz").json().get("live_version") == version, timeout=30)
        for u in users:
            got = httpx.post(server + "/prerank", json={**body, "user": {"id": u}}).json()
            assert got["index_version"] == version and got["user_known"] is True
            assert got["ad_ids"] == want[u]["ad_ids"]
            np.testing.assert_allclose(got["pctr"], want[u]["pctr"], rtol=1e-6, atol=1e-7)
        stranger = httpx.post(server + "/prerank", json={**body, "user": {"id": "no-such-user"}})
        assert stranger.status_code == 200 and stranger.json()["user_known"] is False
        reject = {**body, "user": {"id": "no-such-user"}, "unknown_user": "reject"}
        rejected = httpx.post(server + "/prerank", json=reject)
        assert rejected.status_code == 404 and "user" in rejected.text
        sample = httpx.get(server + "/sample", params={"users": 20}).json()["user_ids"]
        assert len(sample) == 20 and set(sample) <= {str(u) for u in tiny.user_keys}
        metrics = httpx.get(server + "/metrics").text
        assert 'prerank_user_feature_lookups_total{outcome="hit"}' in metrics
        assert 'prerank_user_feature_lookups_total{outcome="cached"}' in metrics  # the 2nd read of users[0..]
    # a replica holds no user table for it: memory does not grow with the user count
    loaded = RedisStore(url).load(version)
    assert loaded.index.users.n_rows == 0 and loaded.user_rows == {} and loaded.user_buckets == block["buckets"]


@pytest.mark.integration
def test_lru_keeps_rows_and_a_redis_outage_gives_defaults_not_errors(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    manifest = export(tiny_hit.artifact, tiny, url, users="per-request")
    version, buckets = manifest["version"], manifest["user_store"]["buckets"]
    codec = UserRowCodec.from_json(manifest["user_store"]["codec"])
    store = UserStore(url, cache_size=3, cooldown=5)
    users = [str(u) for u in tiny.user_keys[:5]]
    table = _table(tiny, tiny_hit)
    found = store.lookup(users[0], online=False, version=version, codec=codec, buckets=buckets)
    assert found.available and found.features is not None
    assert found.features.sparse.keys() == table.sparse.keys()
    for name in table.sparse:
        assert found.features.sparse[name].tolist() == table.sparse[name][:1].tolist()
    missing = store.lookup("no-such-user", online=False, version=version, codec=codec, buckets=buckets)
    assert missing.available and missing.features is None
    for u in users[1:4]:  # capacity 3: users[0] and the stranger are evicted
        store.lookup(u, online=False, version=version, codec=codec, buckets=buckets)
    assert store.cached == 3
    redis_server.stop()
    started = time.perf_counter()
    cached = store.lookup(users[3], online=False, version=version, codec=codec, buckets=buckets)
    assert cached.available and cached.features is not None  # from the LRU, no round trip
    gone = store.lookup(users[0], online=False, version=version, codec=codec, buckets=buckets)
    assert not gone.available and gone.features is None  # evicted and Redis is down: defaults
    assert all(
        not store.lookup(users[0], online=True, version=version, codec=codec, buckets=buckets).available
        for _ in range(100)
    )
    assert time.perf_counter() - started < 0.5  # the breaker skips Redis instead of waiting out timeouts


@pytest.mark.integration
def test_a_server_whose_redis_goes_down_answers_200_with_user_known_false(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url, users="per-request")
    body = {"candidates": {"ad_ids": tiny.ad_ids[:20].tolist()}}
    with serve(redis_server.url, poll="30") as server:
        up = httpx.post(server + "/prerank", json={**body, "user": {"id": str(tiny.user_keys[0])}})
        assert up.status_code == 200 and up.json()["user_known"] is True
        redis_server.stop()
        for u in tiny.user_keys[1:6]:
            down = httpx.post(
                server + "/prerank", json={**body, "user": {"id": str(u)}, "unknown_user": "reject"}, timeout=5
            )
            assert down.status_code == 200 and down.json()["user_known"] is False  # not a 404, not a 5xx
        again = httpx.post(server + "/prerank", json={**body, "user": {"id": str(tiny.user_keys[0])}})
        assert again.status_code == 200 and again.json()["user_known"] is True  # the LRU still has this one


def test_per_request_users_need_a_redis_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-m", "prerank", "export", str(tmp_path / "a"), "--store", f"local:{tmp_path}/s",
         "--user-store", "per-request"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--user-store per-request" in out.stderr
