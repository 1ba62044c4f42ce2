"""Cheap checks that a store URL can be used, run before any expensive work."""

from __future__ import annotations

from pathlib import Path

from storage.layout import parse_store_url

__all__ = ["StoreUnavailable", "check_store"]


class StoreUnavailable(ConnectionError):
    """The store named by a URL cannot be reached (or, when it must exist, does not)."""


def check_store(url: str, must_exist: bool = False) -> None:
    """Raises unless the store at `url` is usable.

    Args:
        url: `local:DIR` or `redis://...`.
        must_exist: for a local store, the directory must already exist (reading commands);
            publishing creates it.

    Raises:
        ValueError: the URL has neither form.
        StoreUnavailable: Redis does not answer PING, or a required local directory is missing.
    """
    scheme, location = parse_store_url(url)
    if scheme == "local":
        root = Path(location)
        if must_exist and not root.is_dir():
            raise StoreUnavailable(f"store directory {location!r} does not exist")
        if root.exists() and not root.is_dir():
            raise StoreUnavailable(f"store path {location!r} is not a directory")
        return
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"redis store {_redacted(url)} is unreachable: {exc}") from None


def _redacted(url: str) -> str:
    """The URL without its password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
