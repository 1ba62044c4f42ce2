"""Event ingestion through a real Redis Stream into the online user store, read by a real replica."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import redis

from offline.export import export
from prerank.cli import main
from service.ingest import PREDICTED_CLICKS, Ingestor, KnownUsers, RedisStreamSource
from service.users import UserStore
from storage import RedisKeys
from storage.users import parse_user_row
from tests.conftest import serve, wait_for
from tools.procs import free_port

pytestmark = pytest.mark.integration
KEYS = RedisKeys()


def event(event_id: str, user: str = "4", ad: int = 1, kind: str = "click", **extra: object) -> dict[str, object]:
    return {"event_id": event_id, "user_id": user, "ad_id": ad, "ts": time.time(), "kind": kind, **extra}


def ingestor(client: redis.Redis, consumer: str = "c1") -> Ingestor:
    source = RedisStreamSource(client, KEYS, consumer=consumer, start="0")
    return Ingestor(source, client, KEYS, KnownUsers(client, KEYS))


def test_clicks_reach_the_next_response_and_change_its_scores(tiny, tiny_hit, redis_server, capsys) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    ads = tiny.ad_ids.tolist()
    body = {"user": {"id": "4"}, "candidates": {"ad_ids": ads}}
    with serve(redis_server.url, poll="30") as url:
        before = httpx.post(url + "/prerank", json=body).json()
        assert before["user_event"] is None
        # clicks on the ads of one category: the user's history gains that category
        category = tiny.ads.sparse["category"]
        clicked = [ads[i] for i in np.flatnonzero(category == category[0])[:5]]
        for i, ad in enumerate(clicked):
            client.xadd(KEYS.user_events, event(f"e{i}", ad=ad))
        assert main(["ingest", "--store", redis_server.url, "--from-start", "--max-events", "5"]) == 0
        assert "applied 5, duplicates 0, dead-lettered 0" in capsys.readouterr().out
        after = httpx.post(url + "/prerank", json=body).json()
        other = httpx.post(url + "/prerank", json={**body, "user": {"id": "5"}}).json()
    assert after["user_event"] == "e4" and other["user_event"] is None
    old = dict(zip(before["ad_ids"], before["pctr"], strict=True))
    new = dict(zip(after["ad_ids"], after["pctr"], strict=True))
    assert max(abs(old[a] - new[a]) for a in ads) > 1e-4  # the history moved the user's vector
    row = parse_user_row(client.get(KEYS.user("4")))
    assert row is not None and row.clicks == clicked and row.n_clicks == 5


def test_replays_are_idempotent_and_unacknowledged_events_are_read_again(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    for eid in ("a", "b", "a"):  # "a" delivered twice by an at-least-once producer
        client.xadd(KEYS.user_events, event(eid, ad=int(tiny.ad_ids[0])))
    client.xadd(KEYS.user_events, event("imp", kind="impression", pctr=0.25))
    predicted_before = PREDICTED_CLICKS._value.get()
    # a consumer that read the batch and died before acknowledging it
    crashed = RedisStreamSource(client, KEYS, consumer="c1", start="0")
    assert len(crashed.poll(10, 100)) == 4
    stats = ingestor(client, "c1").step()  # the same consumer restarted: its pending entries first
    assert (stats.applied, stats.duplicates, stats.dead_lettered) == (3, 1, 0)
    assert client.xpending(KEYS.user_events, "prerank-ingest")["pending"] == 0
    for eid in ("a", "b"):  # the whole stream replayed again: nothing changes
        client.xadd(KEYS.user_events, event(eid, ad=int(tiny.ad_ids[0])))
    client.xadd(KEYS.user_events, event("imp", kind="impression", pctr=0.25))
    assert ingestor(client, "c2").step().duplicates == 3
    assert PREDICTED_CLICKS._value.get() - predicted_before == pytest.approx(0.25)  # once, not per delivery
    row = parse_user_row(client.get(KEYS.user("4")))
    assert row is not None and (row.n_clicks, row.n_impressions, len(row.clicks)) == (2, 1, 2)


def test_bad_events_are_dead_lettered_and_never_touch_a_row(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    client.xadd(KEYS.user_events, event("x1", colour="red"))  # unknown field
    client.xadd(KEYS.user_events, event("x2", ad="not-a-number"))  # type: ignore[arg-type]
    client.xadd(KEYS.user_events, event("x3", user="no-such-user"))
    client.xadd(KEYS.user_events, event("x4", kind="purchase", pctr=1.5))
    client.xadd(KEYS.user_events, {"event_id": "x5"})  # most fields missing
    client.xadd(KEYS.user_events, event("ok", ad=int(tiny.ad_ids[1])))
    stats = ingestor(client).step()
    assert (stats.applied, stats.dead_lettered) == (1, 5)
    assert stats.reasons == {"invalid": 4, "unknown_user": 1}
    dead = {f[b"event_id"].decode(): f[b"reason"].decode() for _, f in client.xrange(KEYS.dead_letters)}
    assert set(dead) == {"x1", "x2", "x3", "x4", "x5"}
    assert "colour" in dead["x1"] and "ad_id" in dead["x2"] and "unknown user" in dead["x3"]
    assert "kind" in dead["x4"] and "pctr" in dead["x4"] and "user_id" in dead["x5"]
    assert client.get(KEYS.user("no-such-user")) is None
    row = parse_user_row(client.get(KEYS.user("4")))
    assert row is not None and row.clicks == [int(tiny.ad_ids[1])] and row.last_event == "ok"


def test_online_store_down_means_snapshot_features_fast_and_no_error(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    dead = UserStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.02, cooldown=5)
    started = time.perf_counter()
    assert dead.get("4") is None  # connection refused: None, and the breaker opens
    assert all(dead.get("4") is None for _ in range(100))
    assert time.perf_counter() - started < 0.5  # the 100 later lookups skipped the store
    export(tiny_hit.artifact, tiny, redis_server.url)
    redis.Redis.from_url(redis_server.url).set(KEYS.user("4"), b"{not json")
    body = {"user": {"id": "4"}, "candidates": {"ad_ids": tiny.ad_ids[:20].tolist()}}
    with serve(redis_server.url, poll="30") as url:
        damaged = httpx.post(url + "/prerank", json=body)
        assert damaged.status_code == 200 and damaged.json()["user_event"] is None  # a damaged row is skipped
        redis_server.stop()
        down = httpx.post(url + "/prerank", json=body)
        assert wait_for(lambda: httpx.post(url + "/prerank", json=body).status_code == 200, timeout=2)
    assert down.status_code == 200 and down.json()["user_event"] is None
