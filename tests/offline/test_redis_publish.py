"""Publishing to a real redis-server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from offline.export import export
from offline.publish import RedisPublisher
from service.store import RedisStore
from storage import RedisKeys

pytestmark = pytest.mark.integration


def test_publish_versions_rollback_and_prune(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    v1, v2, v3 = (export(tiny_hit.artifact, tiny, url, keep=2)["version"] for _ in range(3))
    pub = RedisPublisher(url)
    assert pub.current() == v3 and v1 < v2 < v3
    assert [m["version"] for m in pub.versions()] == [v2, v3]
    client = redis.Redis.from_url(url)
    assert not list(client.scan_iter(match=f"prerank:version:{v1}:*"))  # pruned
    pub.rollback(v2)
    assert pub.current() == v2
    with pytest.raises(ValueError, match="not in the store"):
        pub.rollback(v1)
    loaded = RedisStore(url).load(v2)
    assert loaded.model_version == tiny_hit.metrics["model_version"] and len(loaded.rows) == len(tiny.ad_ids)


def test_a_publish_that_fails_half_way_leaves_the_live_version(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    v1 = export(tiny_hit.artifact, tiny, url)["version"]
    client = redis.Redis.from_url(url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used + 300_000))  # room for part of a version, not all of it
    with pytest.raises(redis.RedisError, match="maxmemory"):
        export(tiny_hit.artifact, tiny, url)
    client.config_set("maxmemory", "0")
    assert RedisPublisher(url).current() == v1
    assert [k for k in client.scan_iter(match="prerank:version:*") if v1.encode() not in k] == []  # partial removed
    assert RedisStore(url).load(v1).version == v1


def test_concurrent_publishers_get_distinct_versions(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    results: list[str] = []

    def publish() -> None:
        try:
            results.append(export(tiny_hit.artifact, tiny, redis_server.url)["version"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 3
    current = RedisPublisher(redis_server.url).current()
    assert current in results
    for v in results:
        assert RedisStore(redis_server.url).load(v).version == v  # every one intact


def test_a_corrupted_chunk_is_detected_on_load(tiny, tiny_hit, redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    client = redis.Redis.from_url(redis_server.url)
    key = RedisKeys().chunk(v1, "index.safetensors", 0)
    data = bytearray(client.get(key))
    data[-3] ^= 0xFF
    client.set(key, bytes(data))
    with pytest.raises(ValueError, match=r"checksum mismatch in index\.safetensors"):
        RedisStore(redis_server.url).load(v1)


def test_password_protected_redis(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password="s3cret")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                import time

                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            export(tiny_hit.artifact, tiny, f"redis://127.0.0.1:{port}/0")
        v1 = export(tiny_hit.artifact, tiny, f"redis://:s3cret@127.0.0.1:{port}/0")["version"]
        assert RedisStore(f"redis://:s3cret@127.0.0.1:{port}/0").current() == v1
    finally:
        proc.kill()
        proc.wait()


def test_version_names_survive_a_redis_that_lost_its_data(tiny, tiny_hit, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Names are the publish time plus a counter: a Redis restarted empty never reissues one."""
    first = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    epoch = RedisStore(redis_server.url).epoch()
    redis_server.stop()
    redis_server.start()  # empty
    second = export(tiny_hit.artifact, tiny, redis_server.url)["version"]
    assert second > first and len(first) == len("v261201120000123")
    assert epoch is not None and RedisStore(redis_server.url).epoch() not in (None, epoch)
