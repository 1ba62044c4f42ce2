"""Follows the store's live-version pointer and hot-swaps model + index off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import torch

from models.artifact import ArtifactError
from service.experiments import ArmSet, Shadow
from service.memory import release_freed_memory
from service.metrics import (
    DELTA_SEQ,
    DELTAS_APPLIED,
    DELTAS_REFUSED,
    FOLLOW_ERRORS,
    PAUSED_ADS,
    REFUSED,
    STORE_ERRORS,
    STORE_HISTORY_LOST,
    SWAPS,
    record_version,
)
from service.scorer import Scorer
from service.store import ServingVersion, Store, probe_user
from storage.experiments import Experiment, ShadowConfig


def _bytes(version: ServingVersion) -> int:
    """Bytes of a version's ad rows and user table in memory."""
    rows = version.storage
    total = rows.vectors.numel() * rows.vectors.element_size()
    total += sum(t.numel() * t.element_size() for t in (rows.scales, rows.routes) if t is not None)
    users = version.index.users
    total += sum(a.nbytes for a in (*users.sparse.values(), *users.dense.values()))
    total += sum(v.nbytes + o.nbytes for v, o in users.sequences.values())
    return int(total)


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
    live_epoch: str | None = None  # the store's lifetime id when the live version was loaded
    history_lost: bool = False  # the store lost its data since the live version was loaded
    delta_seq: int = 0
    deltas_applied: int = 0
    paused_ads: int = 0
    refused_deltas: dict[int, str] = field(default_factory=dict)  # change number -> reason
    experiment: dict[str, Any] | None = None  # the running experiment: name, salt, arms -> versions
    shadow: dict[str, Any] | None = None  # the shadow candidate and its sample rate
    experiment_error: str | None = None  # why the last experiment/shadow config was not applied
    held_bytes: int = 0  # bytes of the versions held besides the live one (arms, shadow)

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
            "store_history_lost": self.history_lost,
            "store_error": self.store_error,
            "swaps": self.swaps,
            "pinned": self.pinned,
            "delta_seq": self.delta_seq,
            "deltas_applied": self.deltas_applied,
            "paused_ads": self.paused_ads,
            "refused_deltas": dict(self.refused_deltas),
            "experiment": self.experiment,
            "shadow": self.shadow,
            "experiment_error": self.experiment_error,
            "held_bytes": self.held_bytes,
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

    def __init__(
        self,
        store: Store,
        scorer: Scorer,
        device: str,
        expected_model: str | None = None,
        memory_budget_bytes: int = 0,
    ) -> None:
        self.store = store
        self.memory_budget_bytes = memory_budget_bytes
        self._extras: dict[str, ServingVersion] = {}  # versions held for experiment arms and the shadow
        self._experiment_key: tuple[str | None, str | None] | None = None
        self.scorer = scorer
        self.device = device
        self.expected_model = expected_model
        self.status = FollowerStatus()
        self._refused: dict[str, str | None] = {}  # refused version -> its identity (retried if it changes)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one check at a time (the loop, /admin/reload and pin)

    def _load_and_warm(self, version: str, any_model: bool = False) -> ServingVersion:
        """Loads a version (of the pinned model unless `any_model`), catches up on its delta chain
        and the pauses, and warms it."""
        expected = None if any_model else self.expected_model
        loaded = self._catch_up(self.store.load(version, self.device, expected))
        with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
            user = loaded.bundle.model.encode_user(probe_user(loaded.bundle, loaded.index, self.device))
            rows = torch.arange(min(len(loaded.rows), 1024)).numpy()
            for _ in range(3):
                loaded.bundle.model.score(user, self.scorer.gather(loaded, rows))
        return loaded

    def _catch_up(self, version: ServingVersion) -> ServingVersion:
        """`version` with the deltas published on it since it was read and the current pauses
        (off the request path; the caller swaps the result in). A delta that cannot be applied
        is skipped, counted and reported: the chain goes on."""
        for stream_id, delta in self.store.deltas(version.version, version.delta_stream_id):
            try:
                version = version.with_delta(delta)
                DELTAS_APPLIED.inc()
            except (ArtifactError, ValueError, RuntimeError) as exc:
                DELTAS_REFUSED.inc()
                self.status.refused_deltas[delta.seq] = str(exc)
                log.error("refused delta %d: %s", delta.seq, exc, extra={"event": "delta_refused"})
            version = dataclasses.replace(version, delta_stream_id=stream_id)
        seq, paused = self.store.paused()
        if seq != version.paused_seq:
            version = version.with_paused(seq, paused)
        return version

    def _load_extra(self, version: str) -> ServingVersion:
        """An arm's or the shadow's version: any model (arms compare models), caught up and warmed."""
        return self._load_and_warm(version, any_model=True)

    def _sync_experiments(self) -> None:
        """Applies the store's experiment and shadow configs: loads the versions they name (within
        the memory budget), swaps the arm set and the shadow, and frees versions no longer named.
        Held versions take the deltas and pauses too. A config that cannot be applied is reported
        in `experiment_error` and the previous one keeps running."""
        live = self.scorer.live
        if live is None:
            return
        experiment, shadow = self.store.experiments()
        key = (
            experiment.model_dump_json() if experiment else None,
            shadow.model_dump_json() if shadow else None,
        )
        if key == self._experiment_key:
            caught_up = {name: self._catch_up(v) for name, v in self._extras.items()}
            if any(caught_up[n] is not v for n, v in self._extras.items()):
                self._extras = caught_up
                self._install(experiment, shadow, keep_shadow=True)
            return
        self._experiment_key = key
        needed = {a.version for a in experiment.arms if a.version != "live"} if experiment else set()
        if shadow is not None and shadow.version != "live":
            needed.add(shadow.version)
        try:
            if self.memory_budget_bytes:
                sizes = {v: self.store.version_bytes(v) for v in needed}
                total = self.store.version_bytes(live.version) + sum(sizes.values())
                if total > self.memory_budget_bytes:
                    raise ArtifactError(
                        f"live + {sorted(needed)} need {total / 2**20:.0f} MiB, more than the memory budget of "
                        f"{self.memory_budget_bytes / 2**20:.0f} MiB (PRERANK_MEMORY_BUDGET_MB)"
                    )
            loaded = {v: self._extras.get(v) or self._load_extra(v) for v in needed}
        except (ArtifactError, ValueError, KeyError, RuntimeError) as exc:
            self.status.experiment_error = f"not applied: {exc}"
            log.error("experiment config not applied: %s", exc, extra={"event": "experiment_refused"})
            return
        self._extras = loaded  # versions no longer named are dropped here (freed with their last request)
        self.status.experiment_error = None
        self._install(experiment, shadow, keep_shadow=False)
        log.info(
            "experiment %s, shadow %s",
            experiment.name if experiment else None,
            shadow.version if shadow else None,
            extra={"event": "experiment_applied"},
        )

    def _install(self, experiment: Experiment | None, shadow: ShadowConfig | None, keep_shadow: bool) -> None:
        if experiment is None:
            self.scorer.arms = None
            self.status.experiment = None
        else:
            versions = tuple(None if a.version == "live" else self._extras[a.version] for a in experiment.arms)
            self.scorer.arms = ArmSet.of(experiment, versions)
            self.status.experiment = {
                "name": experiment.name,
                "salt": experiment.salt,
                "arms": {a.name: {"version": a.version, "share": a.share} for a in experiment.arms},
            }
        candidate = None if shadow is None or shadow.version == "live" else self._extras[shadow.version]
        current = self.scorer.shadow
        if keep_shadow and current is not None:
            current.version = candidate
        else:
            self.scorer.shadow = Shadow(self.scorer, candidate, shadow) if shadow is not None else None
            if current is not None:
                current.close()
        self.status.shadow = None if shadow is None else {"version": shadow.version, "sample": shadow.sample}
        self.status.held_bytes = sum(_bytes(v) for v in self._extras.values())

    def _apply_changes(self) -> bool:
        """Applies new deltas and pauses to the live version; True when that swapped one in."""
        live = self.scorer.live
        if live is None:
            return False
        updated = self._catch_up(live)
        if updated is live or (
            updated.delta_stream_id == live.delta_stream_id and updated.paused_seq == live.paused_seq
        ):
            return False
        if self.scorer.live is not live:  # a new version was swapped in meanwhile
            return False
        self.scorer.swap(updated)
        self._note_changes(updated)
        log.info(
            "applied changes up to %d on %s",
            updated.delta_seq,
            updated.version,
            extra={"event": "delta_applied", "version": updated.version, "delta_seq": updated.delta_seq},
        )
        return True

    def _note_changes(self, version: ServingVersion) -> None:
        self.status.delta_seq = version.delta_seq
        self.status.deltas_applied = version.deltas_applied
        self.status.paused_ads = len(version.paused)
        DELTA_SEQ.set(version.delta_seq)
        PAUSED_ADS.set(len(version.paused))

    async def pin(self, version: str) -> None:
        """Serves `version` (loading it if needed) and stops following the pointer until `unpin`.

        Raises:
            ArtifactError / OSError: the version cannot be loaded; the live one keeps serving.
        """
        async with self._lock:
            if version != self.status.live_version:
                identity = await anyio.to_thread.run_sync(self.store.identity, version)
                epoch = await anyio.to_thread.run_sync(self.store.epoch)
                loaded = await anyio.to_thread.run_sync(self._load_and_warm, version)
                await self._swap_in(loaded, time.perf_counter(), identity, epoch)
            self.status.pinned = version

    async def unpin(self) -> bool:
        """Follows the pointer again; returns True when that swapped versions."""
        self.status.pinned = None
        return await self.check()

    async def check(self) -> bool:
        """One look at the pointer, the deltas and the pauses; loads and swaps if anything moved.
        Returns True on a swap (of a version, or of the live one with changes applied)."""
        async with self._lock:
            return await self._check()

    def _read_pointer(self) -> tuple[str | None, str | None, str | None]:
        target = self.store.current()
        identity = None if target is None else self.store.identity(target)
        return target, identity, self.store.epoch()

    def _history_lost(self, epoch: str | None) -> bool:
        """True (and reported) when the store is not the one the live version came from."""
        if self.scorer.live is None or self.status.live_epoch is None or epoch == self.status.live_epoch:
            return False
        report = (
            f"the store lost its history since {self.status.live_version} was loaded "
            f"(store epoch {self.status.live_epoch} is now {epoch or 'gone'}); "
            "serving it from memory until a version is published"
        )
        self.status.history_lost = True
        if report != self.status.store_history:
            self.status.store_history = report
            STORE_HISTORY_LOST.inc()
            log.warning(report, extra={"event": "store_history_lost"})
        return True

    async def _check(self) -> bool:
        swapped = await self._check_versions()
        try:
            await anyio.to_thread.run_sync(self._sync_experiments)
        except ConnectionError as exc:
            self.status.store_error = str(exc)
        return swapped

    async def _check_versions(self) -> bool:
        if self.status.pinned is not None:  # the pinned version still takes its deltas and the pauses
            try:
                return await anyio.to_thread.run_sync(self._apply_changes)
            except ConnectionError as exc:
                STORE_ERRORS.inc()
                self.status.store_error = str(exc)
                return False
        try:
            target, identity, epoch = await anyio.to_thread.run_sync(self._read_pointer)
            self.status.store_error = None
        except OSError as exc:
            STORE_ERRORS.inc()
            self.status.store_error = f"cannot read the store: {exc}"
            log.warning(self.status.store_error, extra={"event": "store_error"})
            return False
        lost = self._history_lost(epoch)
        if target is None or self._refused.get(target, "") == identity:
            return False
        if target == self.status.live_version:
            # Names alone are not identity: a store that lost its data (Redis restarted empty)
            # reissues names, so the live name may now hold another version. Compare content.
            if identity is None or identity == self.status.live_identity:
                if lost:
                    return False
                try:
                    return await anyio.to_thread.run_sync(self._apply_changes)
                except ConnectionError as exc:
                    STORE_ERRORS.inc()
                    self.status.store_error = str(exc)
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
        await self._swap_in(loaded, started, identity, epoch)
        return True

    async def _swap_in(
        self, loaded: ServingVersion, started: float, identity: str | None = None, epoch: str | None = None
    ) -> None:
        """Makes `loaded` live, then gives the dropped version's heap pages back (off the event loop)."""
        self._make_live(loaded, started, identity, epoch)
        await anyio.to_thread.run_sync(release_freed_memory)

    def _make_live(
        self, loaded: ServingVersion, started: float, identity: str | None = None, epoch: str | None = None
    ) -> None:
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
        self.status.live_epoch = epoch
        self.status.history_lost = False
        self._note_changes(loaded)
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
