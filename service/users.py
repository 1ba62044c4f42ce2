"""Per-request reads of the online user store (storage.users), with a breaker for outages.

One GET per request on a short timeout. When Redis fails, lookups stop for `cooldown` seconds
(each request would otherwise wait out the timeout) and requests are scored with the snapshot
features of the live version: never an error.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter

from storage import RedisKeys
from storage.users import UserRow, parse_user_row

__all__ = ["OnlineUsers"]

log = logging.getLogger(__name__)

LOOKUPS = Counter("prerank_online_user_lookups_total", "online user-store reads by outcome", ["outcome"])


class OnlineUsers:
    """Reads a user's online row from the store's Redis.

    Args:
        url: the store's redis:// URL.
        timeout: seconds one read may take.
        cooldown: seconds lookups stay off after a failure.
    """

    def __init__(self, url: str, keys: RedisKeys | None = None, timeout: float = 0.02, cooldown: float = 1.0) -> None:
        import redis

        self.keys = keys or RedisKeys()
        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.cooldown = cooldown
        self._off_until = 0.0
        self._errors = (redis.RedisError, OSError, ValueError)

    def get(self, user_id: str) -> UserRow | None:
        """The row, or None (no events for the user, or the store is unavailable)."""
        if time.monotonic() < self._off_until:
            LOOKUPS.labels("skipped").inc()
            return None
        try:
            row = parse_user_row(self.client.get(self.keys.user(user_id)))
        except self._errors as exc:
            self._off_until = time.monotonic() + self.cooldown
            LOOKUPS.labels("error").inc()
            log.warning("online user store unavailable: %s", exc, extra={"event": "online_users_error"})
            return None
        LOOKUPS.labels("miss" if row is None else "hit").inc()
        return row
