"""Publishers: put a staged index version into a store and move the live pointer.

A staged version is a directory (model/ + index files + manifest.json, see models.artifact).
Both stores give the same guarantees: the pointer moves only after the whole version is
written and read back, a failure removes what was partly written, the last `keep` versions are
kept, and concurrent publishers get distinct version numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.torch import load_file

from models.artifact import MODEL_SUBDIR, ArtifactError, load_artifact, load_index, write_json
from models.tables import FeatureTable
from storage import (
    CURRENT_POINTER,
    REDIS_CHUNK_BYTES,
    VERSIONS_DIR,
    RedisKeys,
    fetch_redis_version,
    parse_store_url,
    read_pointer,
    version_sort_key,
)
from storage.user_features import UserRowCodec, bucket_of, choose_user_store, n_buckets

__all__ = ["KEEP_VERSIONS", "LocalPublisher", "Publisher", "RedisPublisher", "open_publisher"]

log = logging.getLogger(__name__)
KEEP_VERSIONS = 5


class Publisher(Protocol):
    def staging_dir(self) -> Path: ...

    def publish(self, staged: Path, manifest: dict[str, Any]) -> dict[str, Any]: ...

    def versions(self) -> list[dict[str, Any]]: ...

    def current(self) -> str | None: ...

    def rollback(self, version: str) -> None: ...


#: Files of the replicated user store; a per-request version keeps them out of the store.
USER_FILES = ("users.safetensors", "user_ids.json")
#: Users packed and written per Redis pipeline.
USER_BATCH = 50_000
#: Buckets whose MEMORY USAGE is summed to measure a per-request user store.
MEMORY_SAMPLE = 2_000


def open_publisher(url: str, keep: int = KEEP_VERSIONS, blobs: str | None = None, users: str = "auto") -> Publisher:
    """The publisher of a store URL.

    Args:
        blobs: redis:// stores only: an fsspec URL (a local directory, file://, s3://, gs://, ...)
            that receives the version files instead of Redis.
        users: where the user feature table goes: `replicated` (a file every replica loads),
            `per-request` (packed rows in Redis, read per request; redis:// stores only), or
            `auto` (per-request above storage.user_features.REPLICATED_MAX_USERS users).
    """
    choose_user_store(users, 0)  # a bad mode fails before any work
    scheme, location = parse_store_url(url)
    if scheme == "local":
        if blobs:
            raise ValueError("a blob store goes with a redis:// store (a local: store is already files)")
        if users == "per-request":
            raise ValueError("per-request user rows go with a redis:// store (a local: store replicates them)")
        return LocalPublisher(Path(location), keep)
    return RedisPublisher(location, keep, blobs=blobs, users=users)


def _verify_staged(staged: Path) -> None:
    load_index(staged)
    load_artifact(staged / MODEL_SUBDIR)


class LocalPublisher:
    """A directory store: versions/<v>/ and a CURRENT file replaced atomically."""

    def __init__(self, root: Path, keep: int = KEEP_VERSIONS) -> None:
        self.root = root
        self.keep = keep
        self.dir = root / VERSIONS_DIR

    def staging_dir(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f".staging-{uuid.uuid4().hex}"

    def _names(self) -> list[str]:
        if not self.dir.exists():
            return []
        names = [p.name for p in self.dir.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()]
        return sorted(names, key=version_sort_key)

    def current(self) -> str | None:
        return read_pointer(self.root)

    def _point(self, version: str) -> None:
        tmp = self.root / f".{CURRENT_POINTER}.{uuid.uuid4().hex}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / CURRENT_POINTER)

    def publish(self, staged: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        placed: Path | None = None
        try:
            while True:  # concurrent publishers: the first rename to a free name wins
                names = self._names()
                version = f"v{(version_sort_key(names[-1]) if names else 0) + 1:06d}"
                manifest["version"] = version
                write_json(staged / "manifest.json", manifest)
                try:
                    os.rename(staged, self.dir / version)
                    placed = self.dir / version
                    break
                except OSError:
                    if not (self.dir / version).exists():
                        raise
            _verify_staged(placed)
        except BaseException:
            shutil.rmtree(placed or staged, ignore_errors=True)  # never leave a partial version behind
            raise
        self._point(version)
        self._prune(version)
        return manifest

    def _prune(self, current: str) -> None:
        names = self._names()
        for name in names[: -self.keep] if self.keep > 0 else []:
            if name != current:
                shutil.rmtree(self.dir / name, ignore_errors=True)

    def versions(self) -> list[dict[str, Any]]:
        out = []
        for name in self._names():
            try:
                manifest = json.loads((self.dir / name / "manifest.json").read_text())
            except (OSError, ValueError):
                manifest = {"version": name, "error": "unreadable manifest"}
            out.append(manifest)
        return out

    def rollback(self, version: str) -> None:
        if version not in self._names():
            raise ArtifactError(f"version {version!r} is not in the store; have {self._names()}")
        _verify_staged(self.dir / version)
        self._point(version)


#: Next version number: the counter + 1, but never below the publish time as YYMMDDhhmmssmmm (UTC,
#: milliseconds), so a Redis that lost its data (and its counter) never reissues a name. 15 digits
#: stay exact in Lua's doubles (< 2^53). Sets the store's epoch (a random id) if it has none.
#: Atomic: concurrent publishers get distinct numbers.
_NEXT_VERSION = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
local floor = tonumber(ARGV[1])
if n < floor then n = floor end
redis.call('SET', KEYS[1], n)
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return n
"""


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _files(staged: Path) -> list[str]:
    return sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file() and p.name != "manifest.json")


class RedisPublisher:
    """A Redis store: each file of a version in binary chunks, a manifest, a `current` key.

    With `blobs` (an fsspec URL), the files go to `<blobs>/<prefix>/<version>/<path>` in that file
    or object store instead, and Redis keeps only the manifest (sizes, sha256 and each file's URL),
    the pointer and the events: Redis memory per version is the manifest's few kilobytes, whatever
    the corpus size. Each manifest records `redis_bytes`, what the version stores in Redis.

    With `users` resolving to `per-request` (see `open_publisher`), the user table is written as
    packed rows into bucketed hashes (storage.user_features) and its files stay out of the
    version; the manifest's `user_store` block holds the layout, the bucket count and the
    measured Redis bytes per user.
    """

    def __init__(
        self,
        url: str,
        keep: int = KEEP_VERSIONS,
        prefix: str | None = None,
        blobs: str | None = None,
        users: str = "auto",
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=30)
        self.keys = RedisKeys(prefix) if prefix else RedisKeys()
        self.keep = keep
        self.blobs = blobs.rstrip("/") if blobs else None
        self.users = users

    def _blob_root(self, version: str) -> str:
        assert self.blobs is not None
        return f"{self.blobs}/{self.keys.prefix}/{version}"

    def staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="prerank-stage-")) / "version"

    def current(self) -> str | None:
        value = self.client.get(self.keys.current)
        return value.decode() if value else None

    def publish(self, staged: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        floor = int(time.strftime("%y%m%d%H%M%S", time.gmtime(now))) * 1000 + int(now * 1000) % 1000
        number = self.client.eval(_NEXT_VERSION, 2, self.keys.seq, self.keys.epoch, floor, uuid.uuid4().hex)
        version = f"v{int(number):06d}"
        manifest["version"] = version
        written: list[str] = []
        blobs_written = False
        if self.blobs is not None:
            import fsspec

            fs, blob_root = fsspec.core.url_to_fs(self._blob_root(version))
        try:
            files = []
            redis_bytes = 0
            per_request = choose_user_store(self.users, int(manifest.get("n_users", 0))) == "per-request"
            if per_request:
                manifest["user_store"] = self._write_users(staged, version, written)
                redis_bytes += manifest["user_store"]["redis_bytes"]
                manifest["checksums"] = {k: v for k, v in manifest.get("checksums", {}).items() if k not in USER_FILES}
            else:
                manifest["user_store"] = {"mode": "replicated", "n_users": int(manifest.get("n_users", 0))}
            for rel in _files(staged):
                if per_request and rel in USER_FILES:
                    continue
                if self.blobs is not None:
                    digest, size = _sha256(staged / rel)
                    target = f"{blob_root}/{rel}"
                    blobs_written = True
                    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                    fs.put_file(str(staged / rel), target)
                    url = f"{self._blob_root(version)}/{rel}"
                    files.append({"path": rel, "size": size, "sha256": digest, "blob": url})
                    continue
                data = (staged / rel).read_bytes()
                chunks = [data[i : i + REDIS_CHUNK_BYTES] for i in range(0, len(data), REDIS_CHUNK_BYTES)] or [b""]
                pipe = self.client.pipeline(transaction=False)
                for i, chunk in enumerate(chunks):
                    key = self.keys.chunk(version, rel, i)
                    pipe.set(key, chunk)
                    written.append(key)
                pipe.execute()
                redis_bytes += len(data)
                files.append(
                    {"path": rel, "size": len(data), "chunks": len(chunks), "sha256": hashlib.sha256(data).hexdigest()}
                )
            manifest["files"] = files
            manifest["published"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if self.blobs is not None:
                manifest["blobs"] = self._blob_root(version)
            manifest["redis_bytes"] = 0
            text = json.dumps(manifest, sort_keys=True)
            manifest["redis_bytes"] = redis_bytes + len(text) + 32  # the manifest, its own size field included
            self.client.set(self.keys.manifest(version), json.dumps(manifest, sort_keys=True))
            written.append(self.keys.manifest(version))
            self._verify(version)
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(self.keys.versions, {version: version_sort_key(version)})
                pipe.set(self.keys.current, version)
                pipe.publish(self.keys.events, version)
                pipe.execute()
        except BaseException:
            if written:
                try:
                    self.client.delete(*written)
                except Exception:
                    log.warning("could not clean up partial version %s", version)
            if blobs_written:
                self._delete_blobs(version)
            raise
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)
        self._prune(version)
        return manifest

    def _write_users(self, staged: Path, version: str, written: list[str]) -> dict[str, Any]:
        """Writes the staged user table as packed rows into bucketed hashes; returns `user_store`."""
        user_ids = [str(u) for u in json.loads((staged / "user_ids.json").read_text())]
        table = FeatureTable.from_tensors(load_file(str(staged / "users.safetensors")), "user", len(user_ids))
        codec = UserRowCodec.for_table(table)
        buckets = n_buckets(len(user_ids))
        of = np.fromiter((bucket_of(u, buckets) for u in user_ids), np.int64, len(user_ids))
        order = np.argsort(of, kind="stable")
        t0 = time.perf_counter()
        keys = set()
        for start in range(0, len(order), USER_BATCH):
            rows = order[start : start + USER_BATCH]
            packed = codec.pack(table, rows)
            pipe = self.client.pipeline(transaction=False)
            run: dict[str, bytes] = {}
            current = -1
            for row, data in zip(rows.tolist(), packed, strict=True):
                if of[row] != current:
                    if run:
                        pipe.hset(self.keys.user_bucket(version, current), mapping=run)  # type: ignore[arg-type]
                    current, run = int(of[row]), {}
                    keys.add(current)
                run[user_ids[row]] = data
            if run:
                pipe.hset(self.keys.user_bucket(version, current), mapping=run)  # type: ignore[arg-type]
            pipe.execute()
        written.extend(self.keys.user_bucket(version, b) for b in sorted(keys))
        seconds = time.perf_counter() - t0
        sample = sorted(keys)[:MEMORY_SAMPLE]
        pipe = self.client.pipeline(transaction=False)
        for b in sample:
            pipe.memory_usage(self.keys.user_bucket(version, b), samples=0)
        sampled = sum(int(n or 0) for n in pipe.execute())
        sampled_users = int(np.isin(of, np.array(sample, np.int64)).sum()) if sample else 0
        per_user = sampled / sampled_users if sampled_users else 0.0
        log.info("wrote %d user rows into %d buckets in %.1fs", len(user_ids), len(keys), seconds)
        return {
            "mode": "per-request",
            "n_users": len(user_ids),
            "buckets": buckets,
            "codec": codec.to_json(),
            "bytes_per_user": round(per_user, 1),
            "redis_bytes": round(per_user * len(user_ids)),
            "write_seconds": round(seconds, 2),
        }

    def _verify(self, version: str) -> None:
        """Reads the version back from Redis and loads it, as a server would."""
        with tempfile.TemporaryDirectory(prefix="prerank-verify-") as tmp:
            fetch_redis_version(self.client.mget, self.keys, version, Path(tmp) / version)
            _verify_staged(Path(tmp) / version)

    def _prune(self, current: str) -> None:
        names = [n.decode() for n in self.client.zrange(self.keys.versions, 0, -1)]
        for name in names[: -self.keep] if self.keep > 0 else []:
            if name == current:
                continue
            raw = self.client.get(self.keys.manifest(name))
            keys = list(self.client.scan_iter(match=self.keys.version_pattern(name), count=1000))
            if keys:
                self.client.delete(*keys)
            self.client.zrem(self.keys.versions, name)
            if raw and json.loads(raw).get("blobs"):
                self._delete_blobs(name, json.loads(raw)["blobs"])

    def _delete_blobs(self, version: str, root: str | None = None) -> None:
        import fsspec

        url = root or self._blob_root(version)
        try:
            fs, path = fsspec.core.url_to_fs(url)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except Exception:
            log.warning("could not delete the blobs of %s at %s", version, url)

    def versions(self) -> list[dict[str, Any]]:
        out = []
        for name in self.client.zrange(self.keys.versions, 0, -1):
            raw = self.client.get(self.keys.manifest(name.decode()))
            out.append(json.loads(raw) if raw else {"version": name.decode(), "error": "missing manifest"})
        return out

    def rollback(self, version: str) -> None:
        if self.client.zscore(self.keys.versions, version) is None:
            raise ArtifactError(f"version {version!r} is not in the store")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.current, version)
            pipe.publish(self.keys.events, version)
            pipe.execute()
