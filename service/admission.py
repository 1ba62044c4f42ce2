"""Admission control: bounded concurrency, a bounded queue, request deadlines.

At most `max_concurrency` requests score at once (each holds a thread and a core's worth of
memory bandwidth); up to `max_queue` more wait for a slot. A request beyond that is shed at once
(503 with Retry-After), before its body is parsed, so an overloaded replica answers in
microseconds instead of letting queues grow into seconds. A request may carry a budget
(`X-Request-Timeout-Ms`, or `PRERANK_REQUEST_TIMEOUT_MS` by default): if no slot frees up within
it, the request is abandoned with 504 before any scoring work is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service.errors import DeadlineExceeded, Overloaded
from service.metrics import DEADLINE_EXPIRED, QUEUED, SHED

__all__ = ["Admission", "deadline_from"]

MAX_TIMEOUT_MS = 60_000


def deadline_from(header: str | None, default_ms: float | None) -> float | None:
    """The request's deadline on the monotonic clock, from its timeout header (milliseconds,
    0 < t <= 60,000) or the default; a malformed header falls back to the default."""
    budget = default_ms
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            value = float("nan")
        if 0 < value <= MAX_TIMEOUT_MS:
            budget = value
    return None if budget is None else time.monotonic() + budget / 1e3


class Admission:
    """Slots for scoring and a bounded wait for them (one per app, used on the event loop)."""

    def __init__(self, max_concurrency: int, max_queue: int, max_queue_ms: float | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.max_queue_s = None if max_queue_ms is None else max_queue_ms / 1e3
        self._slots = asyncio.Semaphore(max_concurrency)
        self._active = 0
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float | None) -> AsyncIterator[None]:
        """Holds a scoring slot for the body of the `async with`.

        Raises:
            Overloaded: every slot is busy and the queue is full, or the request waited in the
                queue for `max_queue_ms` (shed: what has queued that long would answer late).
            DeadlineExceeded: the deadline passed while waiting.
        """
        if self._active >= self.max_concurrency and self._waiting >= self.max_queue:
            SHED.inc()
            raise Overloaded(
                "request", f"over capacity: {self._active} scoring and {self._waiting} queued; retry shortly"
            )
        self._waiting += 1
        QUEUED.inc()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            limit = self.max_queue_s
            by_queue = limit is not None and (timeout is None or limit < timeout)
            if by_queue:
                timeout = limit
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout)
            except TimeoutError:
                if by_queue:
                    SHED.inc()
                    raise Overloaded(
                        "request",
                        f"over capacity: queued {(limit or 0.0) * 1e3:.0f} ms without a slot; retry shortly",
                    ) from None
                DEADLINE_EXPIRED.inc()
                raise DeadlineExceeded("header.x-request-timeout-ms", "the deadline passed while queued") from None
        finally:
            self._waiting -= 1
            QUEUED.dec()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._slots.release()
