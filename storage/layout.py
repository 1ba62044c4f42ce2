"""Store URLs, the local store's directory layout, its live pointer and version names."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["CURRENT_POINTER", "VERSIONS_DIR", "StoreURL", "parse_store_url", "read_pointer", "version_sort_key"]

#: A local store is `ROOT/CURRENT` (the live version's name) and `ROOT/versions/<version>/`.
CURRENT_POINTER = "CURRENT"
VERSIONS_DIR = "versions"

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class StoreURL(NamedTuple):
    """A parsed store URL: scheme "local" with a directory, or "redis" with the full URL."""

    scheme: str
    location: str


def parse_store_url(url: str) -> StoreURL:
    """Splits a store URL into (scheme, location): `local:DIR` or `redis://host:port/db`.

    Raises:
        ValueError: neither form, or `local:` without a directory.
    """
    if url.startswith("local:"):
        location = url.removeprefix("local:")
        if not location:
            raise ValueError("store URL 'local:' needs a directory, e.g. local:./store")
        return StoreURL("local", location)
    if url.startswith(REDIS_SCHEMES):
        return StoreURL("redis", url)
    raise ValueError(f"store URL must be local:DIR or redis://[:password@]host:port/db, got {url!r}")


def read_pointer(root: Path) -> str | None:
    """The live version named by a local store's CURRENT file, or None when nothing is published."""
    try:
        return (root / CURRENT_POINTER).read_text().strip() or None
    except FileNotFoundError:
        return None


def version_sort_key(version: str) -> int:
    """Index versions are 'v' + a decimal sequence number; they sort by that number."""
    if not version.startswith("v") or not version[1:].isdigit():
        raise ValueError(f"not an index version name: {version!r}")
    return int(version[1:])
