"""Per-request reads of the user stores in Redis, with an LRU and a breaker for outages.

Two things may be read for the requesting user, in one pipelined round trip:

* the **online row** (storage.users): recent clicks since the last export, written by
  `prerank ingest`; never cached, since it changes with every event;
* the **snapshot features** of a version published with a per-request user store
  (storage.user_features): one packed row in a bucketed hash. Versions are immutable, so the
  decoded row (or its absence) is kept in a bounded LRU keyed by (version, user id) and later
  requests from that user skip the HGET.

One short timeout covers the round trip. When Redis fails, lookups stop for `cooldown` seconds
(each request would otherwise wait out the timeout) and requests are scored with default
features and `user_known: false`: never an error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from prometheus_client import Counter

from models.tables import FeatureTable
from storage import RedisKeys
from storage.user_features import UserRowCodec, bucket_of
from storage.users import UserRow, parse_user_row

__all__ = ["Lookup", "UserStore"]

log = logging.getLogger(__name__)

LOOKUPS = Counter("prerank_online_user_lookups_total", "online user-store reads by outcome", ["outcome"])
FEATURE_LOOKUPS = Counter(
    "prerank_user_feature_lookups_total",
    "per-request user feature reads by outcome (cached: served from the LRU)",
    ["outcome"],
)

_ABSENT = FeatureTable(0)  # cached "this version has no row for this user"


def _present(features: FeatureTable | None) -> FeatureTable | None:
    return None if features is _ABSENT else features


@dataclass(frozen=True)
class Lookup:
    """What one round trip found.

    Attributes:
        features: the user's snapshot row (one-row table), None when the version has none for
            the user or was not asked.
        online: the online row, None when there is none or it was not asked.
        available: False when Redis could not be read (the breaker is open or the read failed).
    """

    features: FeatureTable | None = None
    online: UserRow | None = None
    available: bool = True


class UserStore:
    """Reads users' rows from the store's Redis.

    Args:
        url: the store's redis:// URL.
        timeout: seconds one round trip may take.
        cooldown: seconds lookups stay off after a failure.
        cache_size: decoded snapshot rows kept (per-request user stores).
        online: whether to read online rows at all (`prerank ingest` writes them).
    """

    def __init__(
        self,
        url: str,
        keys: RedisKeys | None = None,
        timeout: float = 0.02,
        cooldown: float = 1.0,
        cache_size: int = 100_000,
        online: bool = True,
    ) -> None:
        import redis

        self.keys = keys or RedisKeys()
        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.cooldown = cooldown
        self.online = online
        self._off_until = 0.0
        self._errors = (redis.RedisError, OSError, ValueError)
        self._cache: LRUCache[tuple[str, str], FeatureTable] = LRUCache(maxsize=max(1, cache_size))
        self._lock = threading.Lock()  # requests are scored on several threads

    @property
    def cached(self) -> int:
        """Snapshot rows held in the LRU."""
        return len(self._cache)

    def sample(self, version: str, buckets: int, n: int) -> list[str]:
        """Up to `n` distinct user ids of a per-request user store (random buckets, random fields)."""
        rng = random.Random()
        picked: dict[str, None] = {}
        for _ in range(4):  # a few rounds: buckets hold ~USERS_PER_BUCKET users each
            pipe = self.client.pipeline(transaction=False)
            for b in rng.sample(range(buckets), min(buckets, max(1, n))):
                pipe.hrandfield(self.keys.user_bucket(version, b), 2)
            for fields in pipe.execute():
                picked.update(dict.fromkeys(f.decode() for f in fields or []))
            if len(picked) >= n:
                break
        return list(picked)[:n]

    def get(self, user_id: str) -> UserRow | None:
        """The online row, or None (no events for the user, or the store is unavailable)."""
        return self.lookup(user_id, online=True).online

    def lookup(
        self,
        user_id: str,
        *,
        online: bool,
        version: str | None = None,
        codec: UserRowCodec | None = None,
        buckets: int = 0,
    ) -> Lookup:
        """The user's online row (if `online`) and snapshot row of `version` (if `codec`), in one
        round trip; the snapshot row from the LRU when it is there."""
        online = online and self.online
        key = (version or "", user_id)
        features: FeatureTable | None = None
        want_features = codec is not None
        if want_features:
            with self._lock:
                features = self._cache.get(key)
            if features is not None:
                FEATURE_LOOKUPS.labels("cached").inc()
                want_features = False
        if not (online or want_features):
            return Lookup(_present(features))
        if time.monotonic() < self._off_until:
            if online:
                LOOKUPS.labels("skipped").inc()
            if want_features:
                FEATURE_LOOKUPS.labels("skipped").inc()
            return Lookup(_present(features), None, available=not want_features)
        try:
            pipe = self.client.pipeline(transaction=False)
            if online:
                pipe.get(self.keys.user(user_id))
            if want_features:
                assert codec is not None and version is not None
                pipe.hget(self.keys.user_bucket(version, bucket_of(user_id, buckets)), user_id)
            replies = pipe.execute()
            row = parse_user_row(replies[0]) if online else None
            if want_features:
                raw = replies[-1]
                assert codec is not None
                features = _ABSENT if raw is None else codec.unpack(raw)
                with self._lock:
                    self._cache[key] = features
                FEATURE_LOOKUPS.labels("miss" if raw is None else "hit").inc()
        except self._errors as exc:
            self._off_until = time.monotonic() + self.cooldown
            if online:
                LOOKUPS.labels("error").inc()
            if want_features:
                FEATURE_LOOKUPS.labels("error").inc()
            log.warning("user store unavailable: %s", exc, extra={"event": "online_users_error"})
            return Lookup(_present(features), None, available=not want_features)
        if online:
            LOOKUPS.labels("miss" if row is None else "hit").inc()
        return Lookup(_present(features), row)
