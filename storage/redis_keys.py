"""The Redis key scheme of a published store and the chunked download of one version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.artifact import ArtifactError, write_json

__all__ = ["REDIS_CHUNK_BYTES", "REDIS_PREFIX", "RedisKeys", "fetch_redis_version"]

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

    def manifest(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:manifest"

    def chunk(self, version: str, path: str, index: int) -> str:
        return f"{self.prefix}:version:{version}:file:{path}:{index}"

    def version_pattern(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:*"


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
    raw = get_many([keys.manifest(version)])[0]
    if raw is None:
        raise ArtifactError(f"version {version}: no manifest in the store")
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"version {version}: manifest is not JSON: {exc}") from None
    dest.mkdir(parents=True)
    for entry in manifest.get("files", []):
        rel = str(entry["path"])
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ArtifactError(f"version {version}: unsafe file path {rel!r}")
        chunks = get_many([keys.chunk(version, rel, i) for i in range(int(entry["chunks"]))])
        if any(c is None for c in chunks):
            raise ArtifactError(f"version {version}: {rel} is incomplete in the store")
        data = b"".join(c for c in chunks if c is not None)
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"version {version}: checksum mismatch in {rel}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    write_json(dest / "manifest.json", {k: v for k, v in manifest.items() if k not in ("files", "published")})
    return manifest
