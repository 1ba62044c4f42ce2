"""Cross-request micro-batching of the user tower.

Each request needs the user tower once, on a batch of one. On a GPU that is a dozen tiny kernel
launches whose cost hardly depends on the batch, so requests in flight at the same moment are
better encoded together. One worker thread takes the first waiting request, gathers whatever else
is queued (waiting up to `window_us` for more, up to `max_batch` requests), encodes each version's
group in one call and hands every request its own row. With `window_us` 0 the batcher never waits:
batches form only from requests that arrived while the worker was busy, so a lone request pays
only the thread hand-off.

Off by default (`PRERANK_USER_BATCH`): on the CPU, with one torch thread per request, the
hand-off costs more than batching saves (results/perf/gpu/README.md).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import cast

import torch

from models.features import Features, Jagged
from service.metrics import USER_BATCH_SIZE
from service.store import ServingVersion

__all__ = ["UserTowerBatcher", "collate"]


def collate(rows: list[Features]) -> Features:
    """The features of several requests as one batch, in order (every item on the same device).

    Tensors are concatenated along the batch axis; a sequence's ids are laid back to back and each
    item's offsets shifted by the ids before it.
    """
    out: Features = {}
    for name, first in rows[0].items():
        if isinstance(first, Jagged):
            parts = [cast(Jagged, r[name]) for r in rows]
            shift, offsets = 0, []
            for part in parts:
                offsets.append(part.offsets + shift)
                shift += int(part.values.shape[0])
            out[name] = Jagged(torch.cat([p.values for p in parts]), torch.cat(offsets))
        else:
            out[name] = torch.cat([cast(torch.Tensor, r[name]) for r in rows])
    return out


def _rows(feats: Features) -> int:
    value = next(iter(feats.values()))
    return int(value.offsets.shape[0] if isinstance(value, Jagged) else value.shape[0])


@dataclass(eq=False)
class _Pending:
    version: ServingVersion
    feats: Features
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None


class UserTowerBatcher:
    """Encodes users of concurrent requests in shared batches (one worker thread).

    Args:
        max_batch: most requests encoded in one call.
        window_us: how long the worker holds a batch open for more requests (0: never waits).
    """

    def __init__(self, max_batch: int, window_us: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.window_s = window_us / 1e6
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="user-tower-batcher", daemon=True)
        self._thread.start()

    def encode(self, version: ServingVersion, feats: Features) -> torch.Tensor:
        """The user tower of one request's features (on the version's device), (rows, H_u, p),
        computed in a shared batch.

        Raises whatever the model raised for the batch holding this request.
        """
        if not self._thread.is_alive():
            raise RuntimeError("the user-tower batcher is closed")
        pending = _Pending(version, feats)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def close(self) -> None:
        """Stops the worker once the requests already queued are answered."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """`first` and the requests queued behind it (up to max_batch, within the window); True
        if the stop marker was met."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take(first)
            groups: dict[int, list[_Pending]] = {}
            for item in batch:  # a swap can land mid-batch: each version encodes its own requests
                groups.setdefault(id(item.version), []).append(item)
            for items in groups.values():
                self._encode(items)

    @staticmethod
    def _encode(items: list[_Pending]) -> None:
        try:
            sizes = [_rows(i.feats) for i in items]
            feats = items[0].feats if len(items) == 1 else collate([i.feats for i in items])
            with torch.inference_mode():
                out = items[0].version.bundle.model.encode_user(feats)
            USER_BATCH_SIZE.observe(len(items))
            start = 0
            for item, n in zip(items, sizes, strict=True):
                item.result = out[start : start + n]
                start += n
        except BaseException as exc:  # handed to every waiting request; the worker lives on
            for item in items:
                item.error = exc
        finally:
            for item in items:
                item.done.set()
