"""Follows the store's live-version pointer and hot-swaps model + index off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import torch

from models.artifact import ArtifactError
from service.metrics import FOLLOW_ERRORS, REFUSED, STORE_ERRORS, STORE_HISTORY_LOST, SWAPS, record_version
from service.scorer import Scorer
from service.store import ServingVersion, Store

__all__ = ["Follower", "FollowerStatus"]

log = logging.getLogger(__name__)

#: Said by /readyz and the log when the live model was trained on MovieLens's `paper` protocol.
PAPER_WARNING = (
    "the live model was trained on the paper protocol, whose features include each row's own label: "
    "its pCTRs are inflated; serve a clean-protocol model in production"
)


@dataclass
class FollowerStatus:
    """What /readyz reports."""

    live_version: str | None = None
    live_model: str | None = None
    live_protocol: str | None = None  # the data protocol the live model was trained on
    loaded_at: float | None = None
    refused: dict[str, str] = field(default_factory=dict)  # version -> reason
    live_identity: str | None = None  # digest of the live version's manifest as the store held it
    store_history: str | None = None  # set when the store reissued the live name with other content
    store_error: str | None = None
    swaps: int = 0
    pinned: str | None = None
    follow_error: str | None = None  # the last unexpected failure of a check (the loop goes on)
    follower_stopped: str | None = None  # why the follow loop ended, if it ever did

    def as_dict(self) -> dict[str, Any]:
        return {
            "store_ok": self.store_error is None,
            "follower_alive": self.follower_stopped is None,
            "follower_stopped": self.follower_stopped,
            "follow_error": self.follow_error,
            "live_version": self.live_version,
            "live_model": self.live_model,
            "live_protocol": self.live_protocol,
            "warning": PAPER_WARNING if self.live_protocol == "paper" else None,
            "loaded_at": self.loaded_at,
            "refused_versions": dict(self.refused),
            "store_history": self.store_history,
            "store_error": self.store_error,
            "swaps": self.swaps,
            "pinned": self.pinned,
        }


class Follower:
    """Loads whatever version the store's pointer names, warms it, then swaps it in.

    A version that fails to load is refused (remembered with its reason, not retried) and the
    previous version keeps serving.

    Args:
        store: the store to follow.
        scorer: receives the swaps.
        device: where vectors and model live.
        expected_model: refuse versions whose model differs (the `serve ARTIFACT` pin).
    """

    def __init__(self, store: Store, scorer: Scorer, device: str, expected_model: str | None = None) -> None:
        self.store = store
        self.scorer = scorer
        self.device = device
        self.expected_model = expected_model
        self.status = FollowerStatus()
        self._refused: dict[str, str | None] = {}  # refused version -> its identity (retried if it changes)
        self._wake = asyncio.Event()

    def _load_and_warm(self, version: str) -> ServingVersion:
        loaded = self.store.load(version, self.device, self.expected_model)
        with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
            users = loaded.index.users
            user = loaded.bundle.model.encode_user(users.take(torch.zeros(1, dtype=torch.int64).numpy(), self.device))
            rows = torch.arange(min(len(loaded.rows), 1024)).numpy()
            for _ in range(3):
                loaded.bundle.model.score(user, self.scorer.gather(loaded, rows))
        return loaded

    async def pin(self, version: str) -> None:
        """Serves `version` (loading it if needed) and stops following the pointer until `unpin`.

        Raises:
            ArtifactError / OSError: the version cannot be loaded; the live one keeps serving.
        """
        if version != self.status.live_version:
            identity = await anyio.to_thread.run_sync(self.store.identity, version)
            loaded = await anyio.to_thread.run_sync(self._load_and_warm, version)
            self._make_live(loaded, time.perf_counter(), identity)
        self.status.pinned = version

    async def unpin(self) -> bool:
        """Follows the pointer again; returns True when that swapped versions."""
        self.status.pinned = None
        return await self.check()

    async def check(self) -> bool:
        """One look at the pointer; loads and swaps if it moved. Returns True on a swap."""
        if self.status.pinned is not None:
            return False
        try:
            target = await anyio.to_thread.run_sync(self.store.current)
            identity = None if target is None else await anyio.to_thread.run_sync(self.store.identity, target)
            self.status.store_error = None
        except OSError as exc:
            STORE_ERRORS.inc()
            self.status.store_error = f"cannot read the store: {exc}"
            log.warning(self.status.store_error, extra={"event": "store_error"})
            return False
        if target is None or self._refused.get(target, "") == identity:
            return False
        if target == self.status.live_version:
            # Names alone are not identity: a store that lost its data (Redis restarted empty)
            # reissues names, so the live name may now hold another version. Compare content.
            if identity is None or identity == self.status.live_identity:
                return False
            self.status.store_history = (
                f"the store's {target} is not the {target} this replica loaded "
                "(its history was lost and the name reissued); loading the new content"
            )
            STORE_HISTORY_LOST.inc()
            log.warning(self.status.store_history, extra={"event": "store_history_lost", "version": target})
        started = time.perf_counter()
        try:
            loaded = await anyio.to_thread.run_sync(self._load_and_warm, target)
        except ConnectionError as exc:  # store went away mid-download: retry on the next check
            STORE_ERRORS.inc()
            self.status.store_error = str(exc)
            log.warning("could not load %s: %s", target, exc, extra={"event": "store_error", "version": target})
            return False
        except (ArtifactError, OSError, ValueError, KeyError, RuntimeError) as exc:
            self.status.refused[target] = str(exc)
            self._refused[target] = identity
            REFUSED.inc()
            log.error("refused version %s: %s", target, exc, extra={"event": "version_refused", "version": target})
            return False
        if self.status.pinned is not None:  # pinned while this version was loading
            return False
        self._make_live(loaded, started, identity)
        return True

    def _make_live(self, loaded: ServingVersion, started: float, identity: str | None = None) -> None:
        previous = self.scorer.swap(loaded)
        record_version(
            loaded.model_version,
            loaded.version,
            (previous.model_version, previous.version) if previous else None,
            str(loaded.index.manifest.get("created") or "") or None,
        )
        SWAPS.inc()
        self.status.live_version = loaded.version
        self.status.live_model = loaded.model_version
        self.status.live_protocol = loaded.bundle.meta.get("protocol")
        if self.status.live_protocol == "paper":
            log.warning(PAPER_WARNING, extra={"event": "paper_protocol_served", "version": loaded.version})
        self.status.live_identity = identity
        self.status.loaded_at = time.time()
        self.status.swaps += 1
        elapsed = time.perf_counter() - started
        log.info(
            "serving %s (%s), loaded in %.2fs",
            loaded.version,
            loaded.model_version,
            elapsed,
            extra={
                "event": "version_swapped",
                "version": loaded.version,
                "model_version": loaded.model_version,
                "load_seconds": round(elapsed, 3),
            },
        )

    async def run(self, interval: float) -> None:
        """Checks on every pub/sub event, and every `interval` seconds regardless (cancelled at shutdown).

        An unexpected failure of one check (a bug, not a store outage) is logged with its
        traceback, counted and shown by /readyz (`follow_error`); the loop goes on.
        """
        listener = asyncio.create_task(self._listen()) if self.store.events_channel else None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=interval)
                self._wake.clear()
                try:
                    await self.check()
                    self.status.follow_error = None
                except Exception as exc:
                    FOLLOW_ERRORS.inc()
                    self.status.follow_error = f"{type(exc).__name__}: {exc}"
                    log.exception("version check failed", extra={"event": "follow_error"})
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    def watch(self, task: asyncio.Task[None]) -> None:
        """Records in the status, for /readyz, if the follow loop `task` ever ends other than by
        cancellation at shutdown: a replica that stopped following must not look healthy."""

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            self.status.follower_stopped = f"{type(exc).__name__}: {exc}" if exc else "the follow loop returned"
            log.error(
                "the version follower stopped: %s",
                self.status.follower_stopped,
                exc_info=exc,
                extra={"event": "follower_stopped"},
            )

        task.add_done_callback(done)

    async def _listen(self) -> None:
        """Subscribes to the store's events channel, reconnecting after failures."""
        import redis.asyncio as aioredis

        while True:
            try:
                client = aioredis.Redis.from_url(self.store.url, socket_connect_timeout=2)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.store.events_channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except (OSError, aioredis.RedisError) as exc:
                log.debug("events channel unavailable: %s", exc)
            await asyncio.sleep(1.0)
