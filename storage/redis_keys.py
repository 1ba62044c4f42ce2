"""The Redis key scheme of a published store and the download of one version.

A version's files are either binary chunks in Redis, or (published with a blob store) files in
a file or object store named by an fsspec URL in the manifest; either way the manifest in Redis
holds each file's size and sha256, checked on every read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.artifact import ArtifactError, write_json

__all__ = ["REDIS_CHUNK_BYTES", "REDIS_PREFIX", "RedisKeys", "fetch_redis_file", "fetch_redis_version", "read_blob"]

REDIS_PREFIX = "prerank"
REDIS_CHUNK_BYTES = 4 * 1024 * 1024


class RedisKeys:
    """Names of every key a published store uses under one prefix."""

    def __init__(self, prefix: str = REDIS_PREFIX) -> None:
        self.prefix = prefix
        self.current = f"{prefix}:current"
        self.seq = f"{prefix}:seq"
        self.versions = f"{prefix}:versions"  # sorted set: version -> sequence number
        self.events = f"{prefix}:events"  # pub/sub channel: the new current version
        self.lock = f"{prefix}:publish-lock"
        self.epoch = f"{prefix}:epoch"  # set by the first publish into an empty Redis; gone when it loses its data
        self.paused = f"{prefix}:paused"  # hash: paused ad id -> change sequence that paused it
        self.paused_seq = f"{prefix}:paused-seq"  # the change sequence of the last pause or resume
        self.change_seq = f"{prefix}:change-seq"  # one counter for every delta and pause
        self.experiment = f"{prefix}:experiment"  # JSON: the A/B experiment (storage.experiments)
        self.shadow = f"{prefix}:shadow"  # JSON: the shadow candidate
        self.user_events = f"{prefix}:user-events"  # stream of impression/click events (prerank ingest reads it)
        self.dead_letters = f"{prefix}:user-events:dead"  # stream of events that could not be applied, with why

    def user(self, user_id: str) -> str:
        """A user's online row (storage.users)."""
        return f"{self.prefix}:user:{user_id}"

    def manifest(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:manifest"

    def chunk(self, version: str, path: str, index: int) -> str:
        return f"{self.prefix}:version:{version}:file:{path}:{index}"

    def user_bucket(self, version: str, bucket: int) -> str:
        """A hash of packed user feature rows of `version` (storage.user_features), user id -> row."""
        return f"{self.prefix}:version:{version}:users:{bucket}"

    def deltas(self, version: str) -> str:
        """Stream of the ad deltas published on top of `version`."""
        return f"{self.prefix}:version:{version}:deltas"

    def delta_blob(self, version: str, seq: int) -> str:
        return f"{self.prefix}:version:{version}:delta:{seq}"

    def version_pattern(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:*"


def _manifest(get_many: Callable[[list[str]], list[bytes | None]], keys: RedisKeys, version: str) -> dict[str, Any]:
    raw = get_many([keys.manifest(version)])[0]
    if raw is None:
        raise ArtifactError(f"version {version}: no manifest in the store")
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"version {version}: manifest is not JSON: {exc}") from None
    return manifest


def read_blob(url: str) -> bytes:
    """The bytes of a version file in a file or object store (any fsspec URL)."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            data: bytes = fh.read()
    except FileNotFoundError:
        raise ArtifactError(f"blob {url} is missing from the object store") from None
    return data


def _file(
    get_many: Callable[[list[str]], list[bytes | None]], keys: RedisKeys, version: str, entry: dict[str, Any]
) -> bytes:
    rel = str(entry["path"])
    if "blob" in entry:  # the bytes live in an object store; Redis holds the manifest and checksum
        data = read_blob(str(entry["blob"]))
    else:
        chunks = get_many([keys.chunk(version, rel, i) for i in range(int(entry["chunks"]))])
        if any(c is None for c in chunks):
            raise ArtifactError(f"version {version}: {rel} is incomplete in the store")
        data = b"".join(c for c in chunks if c is not None)
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"version {version}: checksum mismatch in {rel}")
    return data


def fetch_redis_file(
    get_many: Callable[[list[str]], list[bytes | None]], keys: RedisKeys, version: str, path: str
) -> tuple[dict[str, Any], bytes]:
    """(manifest, verified bytes of one file) of a published version, e.g. `index.safetensors`."""
    manifest = _manifest(get_many, keys, version)
    for entry in manifest.get("files", []):
        if entry["path"] == path:
            return manifest, _file(get_many, keys, version, entry)
    raise ArtifactError(f"version {version}: no file {path!r} in the store")


def fetch_redis_version(
    get_many: Callable[[list[str]], list[bytes | None]], keys: RedisKeys, version: str, dest: Path
) -> dict[str, Any]:
    """Downloads one published version into `dest` (a new directory) and verifies every file.

    Args:
        get_many: a Redis MGET (the caller owns the client).
        keys: the store's key scheme.
        version: e.g. "v000003".
        dest: where the files are written.

    Returns:
        The manifest.

    Raises:
        ArtifactError: missing manifest or chunk, size or checksum mismatch.
    """
    manifest = _manifest(get_many, keys, version)
    dest.mkdir(parents=True)
    for entry in manifest.get("files", []):
        rel = str(entry["path"])
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ArtifactError(f"version {version}: unsafe file path {rel!r}")
        data = _file(get_many, keys, version, entry)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    write_json(dest / "manifest.json", {k: v for k, v in manifest.items() if k not in ("files", "published")})
    return manifest
