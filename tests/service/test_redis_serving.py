"""A real server following a real Redis: hot swap by pub/sub, and Redis killed under traffic."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from offline.export import export
from offline.train import TrainConfig, train
from tests.conftest import serve, wait_for

pytestmark = pytest.mark.integration


class Traffic:
    """A client loop in a thread: records every response's versions and every failure."""

    def __init__(self, url: str, ads: list[int]) -> None:
        self.url, self.ads = url, ads
        self.seen: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self._stop.is_set():
                try:
                    r = c.post(self.url + "/prerank", json={"user": {"id": "4"}, "candidates": {"ad_ids": self.ads}})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(r.text)
                else:
                    body = r.json()
                    self.seen.append((body["index_version"], body["model_version"]))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_pubsub_hot_swap_from_redis_under_traffic(tiny, tiny_hit, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    cfg = TrainConfig(epochs=1, batch_size=512, seed=9, progress=False)
    v2 = train(tiny, "hit", {"heads": 3}, cfg, tmp_path / "v2")
    with serve(redis_server.url, poll="30") as url, Traffic(url, tiny.ad_ids[:40].tolist()) as traffic:
        wait_for(lambda: len(traffic.seen) > 5)
        started = time.monotonic()
        second = export(v2.artifact, tiny, redis_server.url)["version"]  # type: ignore[arg-type]
        # poll interval is 30 s: a swap within 15 s came from the pub/sub event
        assert wait_for(lambda: traffic.seen and traffic.seen[-1][0] == second, timeout=15)
        swap_seconds = time.monotonic() - started
        time.sleep(0.3)
    assert traffic.failures == []
    versions = [v for v, _ in traffic.seen]
    assert versions == sorted(versions) and versions[0] == first
    assert {m for v, m in traffic.seen if v == second} == {v2.metrics["model_version"]}
    assert swap_seconds < 15


def test_redis_killed_under_traffic(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, redis_server.url)
    with serve(redis_server.url, poll="0.3") as url, Traffic(url, tiny.ad_ids[:40].tolist()) as traffic:
        wait_for(lambda: len(traffic.seen) > 5)
        redis_server.stop()
        assert wait_for(lambda: httpx.get(url + "/readyz").json()["status"] == "degraded")
        degraded = httpx.get(url + "/readyz")
        n_during = len(traffic.seen)
        wait_for(lambda: len(traffic.seen) > n_during + 20)
        redis_server.start()
        export(tiny_hit.artifact, tiny, redis_server.url)  # the restarted Redis is empty: republish
        assert wait_for(lambda: httpx.get(url + "/readyz").json()["status"] == "ready")
    assert degraded.status_code == 200 and "redis" in degraded.json()["store_error"]
    assert traffic.failures == []
    assert len(traffic.seen) > n_during + 20  # kept serving from memory while Redis was down


def test_redis_restarted_empty_then_a_different_model_is_served(tiny, tiny_hit, tiny_dssm, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Redis loses its data: both replicas say so at once, keep serving, then swap to what is published next."""
    first = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    body = {"user": {"id": "4"}, "candidates": {"ad_ids": tiny.ad_ids[:10].tolist()}}
    with serve(redis_server.url, poll="0.3") as a, serve(redis_server.url, poll="0.3") as b:
        for url in (a, b):
            assert httpx.get(url + "/readyz").json()["live_model"] == tiny_hit.metrics["model_version"]
        redis_server.stop()
        assert wait_for(lambda: all(httpx.get(u + "/readyz").json()["status"] == "degraded" for u in (a, b)))
        redis_server.start()  # empty: nothing persisted
        assert wait_for(lambda: all(httpx.get(u + "/readyz").json()["store_history"] for u in (a, b)), timeout=5)
        lost = httpx.get(a + "/readyz").json()
        still = httpx.post(a + "/prerank", json=body).json()  # still serving from memory
        second = export(tiny_dssm.artifact, tiny, redis_server.url)["version"]  # another model, after the restart
        dssm = tiny_dssm.metrics["model_version"]
        swapped = wait_for(
            lambda: all(httpx.get(u + "/readyz").json()["live_model"] == dssm for u in (a, b)), timeout=5
        )
        served = [httpx.post(u + "/prerank", json=body).json() for u in (a, b)]
    assert "lost its history" in lost["store_history"] and first in lost["store_history"]
    assert lost["status"] == "degraded" and still["model_version"] == tiny_hit.metrics["model_version"]
    assert second != first and swapped
    assert {(r["model_version"], r["index_version"]) for r in served} == {(dssm, second)}


def test_polling_alone_follows_the_pointer_when_pubsub_is_blocked(tiny, tiny_hit, tiny_dssm, redis_server) -> None:  # type: ignore[no-untyped-def]
    """With the publish event lost (sent where no replica listens), the poll alone swaps versions."""
    export(tiny_hit.artifact, tiny, redis_server.url)
    with serve(redis_server.url, poll="0.5") as url:
        first = httpx.get(url + "/readyz").json()["live_version"]
        from offline.publish import RedisPublisher

        original = RedisPublisher.publish

        def publish_without_events(self, staged, manifest):  # type: ignore[no-untyped-def]
            self.keys.events = "prerank:nobody-listens"  # the event goes to a channel no replica reads
            return original(self, staged, manifest)

        RedisPublisher.publish = publish_without_events  # type: ignore[method-assign]
        try:
            export(tiny_dssm.artifact, tiny, redis_server.url)
        finally:
            RedisPublisher.publish = original  # type: ignore[method-assign]
        assert wait_for(lambda: httpx.get(url + "/readyz").json()["live_model"] == tiny_dssm.metrics["model_version"])
        assert httpx.get(url + "/readyz").json()["live_version"] != first
