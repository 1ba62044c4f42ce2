"""What the user feature store costs at growing user counts, replicated against per-request.

For each user count the dataset's user table is resampled to that many users (fresh ids, the
same feature distribution), the artifact is exported into a private redis-server in each mode,
and the bench records:

* Redis memory the version adds (INFO used_memory before and after; `keep=1`, flushed between
  runs) and per user, and the publish time;
* a replica's memory for the version: a fresh process loads it as `prerank serve` does and
  reports its RSS growth and peak RSS (VmHWM);
* per-request lookup latency: `service.users.UserStore.lookup` on random users with the LRU
  off (every lookup a round trip, pipelined with the online row's GET as in serving).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from offline.data import Dataset
from offline.export import export
from tools.procs import free_port

__all__ = ["measure", "private_redis", "scaled_users"]

#: Runs in a fresh interpreter: RSS growth and peak while loading the live version of a store.
_LOAD_SCRIPT = """
import gc, json, sys
import torch
torch.set_num_threads(1)
from service.store import RedisStore
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
store = RedisStore(sys.argv[1])
version = store.current()
gc.collect(); before = rss()
loaded = store.load(version)
gc.collect(); after = rss()
with open("/proc/self/status") as f:  # VmHWM: this process's peak (ru_maxrss survives exec from the parent)
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
in_memory = loaded.index.users.n_rows
print(json.dumps({"rss_before": before, "rss_after": after, "peak_rss": peak, "users_in_memory": in_memory}))
"""


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port, without persistence; yields its URL."""
    import redis

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="prerank-userbench-"))
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def scaled_users(dataset: Dataset, n_users: int, seed: int = 0) -> Dataset:
    """`dataset` with its serving user table resampled to `n_users` users with fresh ids."""
    rows = np.random.default_rng(seed).integers(0, dataset.users.n_rows, n_users)
    keys = [f"u{i:09d}" for i in range(n_users)]
    return Dataset(**{**dataset.__dict__, "users": dataset.users.take_rows(rows), "user_keys": keys})


def _lookups(url: str, manifest: dict[str, Any], user_ids: list[str], n: int) -> dict[str, float]:
    from service.users import UserStore
    from storage.user_features import UserRowCodec

    block = manifest["user_store"]
    codec = UserRowCodec.from_json(block["codec"])
    store = UserStore(url, timeout=1.0, cache_size=1)
    rng = np.random.default_rng(1)
    picks = [user_ids[i] for i in rng.integers(0, len(user_ids), n)]
    times = []
    for user in picks:
        t0 = time.perf_counter()
        found = store.lookup(user, online=True, version=manifest["version"], codec=codec, buckets=block["buckets"])
        times.append((time.perf_counter() - t0) * 1e6)
        if found.features is None:
            raise RuntimeError(f"user {user} has no row in {manifest['version']}")
    return {
        "lookup_us_p50": round(float(np.percentile(times, 50)), 1),
        "lookup_us_p99": round(float(np.percentile(times, 99)), 1),
        "lookups": n,
    }


def measure(artifact: Path, dataset: Dataset, n_users: int, mode: str, url: str, lookups: int = 5000) -> dict[str, Any]:
    """One (user count, mode) point; see the module docstring."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    scaled = scaled_users(dataset, n_users)
    before = int(client.info("memory")["used_memory"])
    t0 = time.perf_counter()
    manifest = export(artifact, scaled, url, keep=1, users=mode)
    publish_s = time.perf_counter() - t0
    added = int(client.info("memory")["used_memory"]) - before
    load = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, url], capture_output=True, text=True, check=True)
    replica = json.loads(load.stdout.strip().splitlines()[-1])
    if mode == "per-request":
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=f"*:version:{manifest['version']}:users:*", count=10_000):
            pipe.memory_usage(key, samples=0)
        user_bytes = sum(int(n or 0) for n in pipe.execute())
    else:  # the user table's two files, in Redis chunks
        user_bytes = sum(f["size"] for f in manifest["files"] if f["path"] in ("users.safetensors", "user_ids.json"))
    row: dict[str, Any] = {
        "users": n_users,
        "mode": mode,
        "ads": int(manifest["n_ads"]),
        "publish_s": round(publish_s, 1),
        "redis_bytes": added,
        "user_bytes": user_bytes,
        "user_bytes_per_user": round(user_bytes / n_users, 1),
        "replica_rss_growth": replica["rss_after"] - replica["rss_before"],
        "replica_peak_rss": replica["peak_rss"],
        "replica_users_in_memory": replica["users_in_memory"],
    }
    if mode == "per-request":
        row["manifest_bytes_per_user"] = manifest["user_store"]["bytes_per_user"]
        row["row_write_s"] = manifest["user_store"]["write_seconds"]
        row.update(_lookups(url, manifest, scaled.user_keys, lookups))
    client.flushall()
    return row
