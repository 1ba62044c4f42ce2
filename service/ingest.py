"""`prerank ingest`: impression and click events from a stream into the online user store.

The consumer reads through `EventSource`, which a Kafka consumer could implement as well
(poll / commit offsets / produce to a dead-letter topic); `RedisStreamSource` is the one here:
a Redis Stream read with a consumer group, so several consumers share the load, an event is
acknowledged only after its write succeeded (at-least-once), and entries a dead consumer left
pending are claimed by the others. Each event is applied by one Lua script per user
(storage.users): idempotent per event id, atomic per row.

Bad events (unknown or missing fields, wrong types, a user the live version does not know) are
counted and copied with the reason to a dead-letter stream; they never stop the consumer and
never touch a user's row.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from storage import RedisKeys, fetch_redis_file
from storage.user_features import bucket_of
from storage.users import APPLY_EVENT, DEDUPE_WINDOW, HISTORY_MAX

__all__ = ["Event", "EventSource", "IngestStats", "Ingestor", "KnownUsers", "RawEvent", "RedisStreamSource"]

log = logging.getLogger(__name__)

EVENTS = Counter("prerank_ingest_events_total", "events read from the stream, by outcome", ["outcome"])
LAG = Gauge("prerank_ingest_lag_seconds", "now minus the event time of the last applied event")
IMPRESSIONS = Counter("prerank_ingest_impressions_total", "impression events applied")
CLICKS = Counter("prerank_ingest_clicks_total", "click events applied")
SCORED_IMPRESSIONS = Counter(
    "prerank_ingest_scored_impressions_total", "applied impressions that carried the served pctr"
)
PREDICTED_CLICKS = Counter(
    "prerank_ingest_predicted_clicks_total",
    "sum of the served pctr over scored impressions: predicted / scored impressions vs clicks / impressions "
    "is predicted vs observed CTR",
)
DEAD_LETTER_MAXLEN = 100_000


class Event(BaseModel):
    """One impression or click (stream fields arrive as strings and are parsed)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(..., min_length=1, max_length=128)
    user_id: str = Field(..., min_length=1, max_length=64)
    ad_id: int = Field(..., ge=0, le=2**63 - 1)
    ts: float = Field(..., gt=0, description="event time, Unix seconds")
    kind: Literal["impression", "click"]
    pctr: float | None = Field(None, ge=0, le=1, description="impressions: the pCTR the ad was served with")

    @field_validator("ts")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


@dataclass(frozen=True)
class RawEvent:
    """An entry as the source delivered it: its position (ack handle) and its fields."""

    id: str
    fields: dict[str, str]


class EventSource(Protocol):
    def poll(self, max_events: int, block_ms: int) -> list[RawEvent]:
        """Up to `max_events` events not yet acknowledged by this consumer, waiting up to `block_ms`."""
        ...

    def ack(self, ids: Sequence[str]) -> None:
        """Marks events done (a Kafka consumer commits the offsets)."""
        ...

    def dead_letter(self, event: RawEvent, reason: str) -> None:
        """Keeps a bad event, with why, where an operator can look at it."""
        ...


class RedisStreamSource:
    """A Redis Stream read through a consumer group (XREADGROUP / XACK / XAUTOCLAIM).

    Args:
        start: where a new group starts: "$" (events from now on) or "0" (the whole stream).
        claim_idle_ms: entries pending on another consumer for this long are taken over.
    """

    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        group: str = "prerank-ingest",
        consumer: str | None = None,
        start: str = "$",
        claim_idle_ms: int = 30_000,
    ) -> None:
        import redis

        self.client, self.keys, self.group = client, keys, group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        try:
            client.xgroup_create(keys.user_events, group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._own_pending = True  # first re-read what this consumer took but never acknowledged
        self._next_claim = 0.0

    @staticmethod
    def _decode(entries: list[Any]) -> list[RawEvent]:
        return [
            RawEvent(eid.decode(), {k.decode(): v.decode(errors="replace") for k, v in fields.items()})
            for eid, fields in entries
            if fields is not None
        ]

    def poll(self, max_events: int, block_ms: int) -> list[RawEvent]:
        stream = self.keys.user_events
        if self._own_pending:
            got = self.client.xreadgroup(self.group, self.consumer, {stream: "0"}, count=max_events)
            entries = got[0][1] if got else []
            if entries:
                return self._decode(entries)
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 1000
            claimed = self.client.xautoclaim(
                stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=max_events
            )
            if claimed[1]:
                return self._decode(claimed[1])
        got = self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=max_events, block=block_ms)
        return self._decode(got[0][1]) if got else []

    def ack(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.xack(self.keys.user_events, self.group, *ids)

    def dead_letter(self, event: RawEvent, reason: str) -> None:
        entry = {**event.fields, "source_id": event.id, "reason": reason[:500]}
        self.client.xadd(self.keys.dead_letters, entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    def reset(self) -> None:
        """After a failure: re-read this consumer's unacknowledged events first."""
        self._own_pending = True


class KnownUsers:
    """Whether the live version knows a user: its user_ids.json (replicated user store), or the
    user's row in the version's bucketed hashes (per-request store). Follows the pointer."""

    def __init__(self, client: Any, keys: RedisKeys, refresh_seconds: float = 2.0) -> None:
        self.client, self.keys, self.refresh_seconds = client, keys, refresh_seconds
        self.version: str | None = None
        self.ids: frozenset[str] = frozenset()
        self.buckets = 0  # > 0: the live version stores its users per request
        self._checked = 0.0

    def __call__(self, user_id: str) -> bool:
        if time.monotonic() - self._checked > self.refresh_seconds:
            self._refresh()
        if self.buckets and self.version is not None:
            key = self.keys.user_bucket(self.version, bucket_of(user_id, self.buckets))
            return bool(self.client.hexists(key, user_id))
        return user_id in self.ids

    def _refresh(self) -> None:
        import json

        self._checked = time.monotonic()
        raw = self.client.get(self.keys.current)
        version = raw.decode() if raw else None
        if version is None or version == self.version:
            return
        manifest = json.loads(self.client.get(self.keys.manifest(version)) or b"{}")
        block = manifest.get("user_store", {})
        if block.get("mode") == "per-request":
            self.ids, self.buckets = frozenset(), int(block["buckets"])
            log.info("user directory: per-request rows of %s", version, extra={"event": "users_loaded"})
        else:
            _, data = fetch_redis_file(self.client.mget, self.keys, version, "user_ids.json")
            self.ids, self.buckets = frozenset(str(u) for u in json.loads(data)), 0
            log.info("user directory: %d users of %s", len(self.ids), version, extra={"event": "users_loaded"})
        self.version = version


@dataclass
class IngestStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.applied + self.duplicates + self.dead_lettered

    def add(self, other: IngestStats) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v


def _why(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())


class Ingestor:
    """Applies batches of events from `source` to the online user store."""

    def __init__(
        self,
        source: EventSource,
        client: Any,
        keys: RedisKeys,
        known_user: Callable[[str], bool],
        history_max: int = HISTORY_MAX,
    ) -> None:
        self.source, self.client, self.keys, self.known_user = source, client, keys, known_user
        self.history_max = history_max
        self._apply = client.register_script(APPLY_EVENT)

    def step(self, max_events: int = 500, block_ms: int = 1000) -> IngestStats:
        """One batch: read, validate, apply (one pipelined round trip), dead-letter, acknowledge.

        Raises:
            redis.RedisError: the store failed; nothing of the batch was acknowledged.
        """
        stats = IngestStats()
        batch = self.source.poll(max_events, block_ms)
        if not batch:
            return stats
        good: list[Event] = []
        for raw in batch:
            try:
                event = Event.model_validate(raw.fields)
            except ValidationError as exc:
                self._reject(raw, f"invalid: {_why(exc)}", "invalid", stats)
                continue
            if not self.known_user(event.user_id):
                self._reject(raw, f"unknown user {event.user_id!r}", "unknown_user", stats)
                continue
            good.append(event)
        if good:
            pipe = self.client.pipeline(transaction=False)
            for e in good:
                args = [e.event_id, e.kind, str(e.ad_id), repr(e.ts), self.history_max, DEDUPE_WINDOW]
                self._apply(keys=[self.keys.user(e.user_id)], args=args, client=pipe)
            results = pipe.execute()
            for e, applied in zip(good, results, strict=True):
                if applied != 1:
                    continue
                if e.kind == "click":
                    CLICKS.inc()
                else:
                    IMPRESSIONS.inc()
                    if e.pctr is not None:
                        SCORED_IMPRESSIONS.inc()
                        PREDICTED_CLICKS.inc(e.pctr)
            stats.applied = sum(1 for r in results if r == 1)
            stats.duplicates = len(results) - stats.applied
            LAG.set(max(0.0, time.time() - good[-1].ts))
        self.source.ack([raw.id for raw in batch])
        EVENTS.labels("applied").inc(stats.applied)
        EVENTS.labels("duplicate").inc(stats.duplicates)
        return stats

    def _reject(self, raw: RawEvent, reason: str, kind: str, stats: IngestStats) -> None:
        self.source.dead_letter(raw, reason)
        stats.dead_lettered += 1
        stats.reasons[kind] = stats.reasons.get(kind, 0) + 1
        EVENTS.labels(f"dead_letter_{kind}").inc()
        log.warning("dead-lettered event %s: %s", raw.id, reason, extra={"event": "event_dead_lettered"})
