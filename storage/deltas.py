"""Ad changes between full versions: deltas (upserts, removals, bid changes) and pauses.

A delta is published on top of one live version and tagged with that version's model: its
upserted rows came from the same ad tower, so they can be scored beside the version's own rows.
Deltas live in a Redis Stream under the version (`prefix:version:V:deltas`, pruned with it);
a full export starts a new version with an empty chain, which is how the chain is compacted.
Pauses (an ad's budget ran out) are not tied to a version: one hash of paused ids holds for
whatever version is live, so a full export never un-pauses an ad.

Every change takes a number from one store-wide counter; responses name the highest number a
replica has applied (`delta_seq`). Both writes are Lua scripts: the checks and the write happen
atomically, and the events channel tells every replica at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from models.artifact import ArtifactError
from models.rows import AdRows
from storage.redis_keys import RedisKeys

__all__ = [
    "DELTA_FORMAT",
    "AdDelta",
    "DeltaRefused",
    "publish_delta",
    "read_deltas",
    "read_paused",
    "set_paused",
]

DELTA_FORMAT = 1


class DeltaRefused(ValueError):
    """The store refused a change: the live version moved, or the delta's model is not the live one."""


def _ids(values: object) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


@dataclass(frozen=True)
class AdDelta:
    """Changes to the ads of `base_version`, scored by `model_version`.

    Attributes:
        upsert_ids: new or changed ads, int64 (k,).
        upsert_rows: their rows from the live model's ad tower, in the version's stored dtype.
        upsert_bids: their bids, float32 (k,).
        upsert_hashes: digests of their features (`FeatureTable.row_hashes`), uint64 (k,).
        remove_ids: ads to drop.
        bid_ids / bid_values: bid changes of ads whose features did not change.
        upsert_sparse: the upserted ads' encoded sparse fields (what a click on them adds to a
            behaviour history that shares the field's vocabulary).
        seq: the store's change number (0 until published).
    """

    base_version: str
    model_version: str
    upsert_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    upsert_rows: AdRows | None = None
    upsert_bids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    upsert_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    remove_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bid_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bid_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    upsert_sparse: dict[str, np.ndarray] = field(default_factory=dict)  # encoded sparse ad fields (k,) each
    seq: int = 0
    created: str = ""

    def __post_init__(self) -> None:
        k = len(self.upsert_ids)
        rows = 0 if self.upsert_rows is None else len(self.upsert_rows)
        if rows != k or len(self.upsert_bids) != k or len(self.upsert_hashes) != k:
            raise ArtifactError(
                f"delta: {k} upserted ids but {rows} rows, {len(self.upsert_bids)} bids, "
                f"{len(self.upsert_hashes)} hashes"
            )
        if any(len(v) != k for v in self.upsert_sparse.values()):
            raise ArtifactError(f"delta: sparse fields of the upserts do not all have {k} rows")
        if len(self.bid_ids) != len(self.bid_values):
            raise ArtifactError(f"delta: {len(self.bid_ids)} bid ids but {len(self.bid_values)} bids")
        touched = np.concatenate([self.upsert_ids, self.remove_ids, self.bid_ids])
        if len(np.unique(touched)) != len(touched):
            raise ArtifactError("delta: an ad id appears more than once among upserts, removals and bid changes")
        bids = np.concatenate([self.upsert_bids, self.bid_values])
        if not np.isfinite(bids).all() or (bids < 0).any():
            raise ArtifactError("delta: bids must be finite and >= 0")

    @property
    def size(self) -> int:
        """How many ads it touches."""
        return len(self.upsert_ids) + len(self.remove_ids) + len(self.bid_ids)

    def to_bytes(self) -> bytes:
        """safetensors bytes: the arrays, with the tags as metadata."""
        tensors = {
            "upsert_ids": torch.from_numpy(_ids(self.upsert_ids)),
            "upsert_bids": torch.from_numpy(np.ascontiguousarray(self.upsert_bids, np.float32)),
            "upsert_hashes": torch.from_numpy(np.ascontiguousarray(self.upsert_hashes, np.uint64).view(np.int64)),
            "remove_ids": torch.from_numpy(_ids(self.remove_ids)),
            "bid_ids": torch.from_numpy(_ids(self.bid_ids)),
            "bid_values": torch.from_numpy(np.ascontiguousarray(self.bid_values, np.float32)),
        }
        for name, col in self.upsert_sparse.items():
            tensors[f"sparse/{name}"] = torch.from_numpy(_ids(col))
        if self.upsert_rows is not None:
            tensors["vectors"] = self.upsert_rows.vectors.contiguous()
            if self.upsert_rows.scales is not None:
                tensors["scales"] = self.upsert_rows.scales.contiguous()
            if self.upsert_rows.routes is not None:
                tensors["routes"] = self.upsert_rows.routes.contiguous()
        meta = {
            "format": str(DELTA_FORMAT),
            "base_version": self.base_version,
            "model_version": self.model_version,
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return bytes(save_tensors(tensors, metadata=meta))

    @classmethod
    def from_bytes(cls, data: bytes, seq: int = 0) -> AdDelta:
        """Inverse of `to_bytes`; ArtifactError for anything malformed."""
        try:
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            tensors = load_tensors(data)
        except (ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
            raise ArtifactError(f"delta {seq}: unreadable: {exc}") from None
        if meta.get("format") != str(DELTA_FORMAT):
            raise ArtifactError(f"delta {seq}: format {meta.get('format')!r}, expected {DELTA_FORMAT}")
        rows = None
        if "vectors" in tensors:
            rows = AdRows(tensors["vectors"], tensors.get("scales"), tensors.get("routes"))
        try:
            return cls(
                base_version=str(meta["base_version"]),
                model_version=str(meta["model_version"]),
                upsert_ids=tensors["upsert_ids"].numpy(),
                upsert_rows=rows,
                upsert_bids=tensors["upsert_bids"].numpy(),
                upsert_hashes=tensors["upsert_hashes"].numpy().view(np.uint64),
                remove_ids=tensors["remove_ids"].numpy(),
                bid_ids=tensors["bid_ids"].numpy(),
                bid_values=tensors["bid_values"].numpy(),
                upsert_sparse={
                    k.removeprefix("sparse/"): t.numpy() for k, t in tensors.items() if k.startswith("sparse/")
                },
                seq=seq,
                created=str(meta.get("created", "")),
            )
        except KeyError as exc:
            raise ArtifactError(f"delta {seq}: missing {exc}") from None


#: KEYS: current, manifest(base), change_seq, deltas(base), events. ARGV: base, model, payload, sha256.
_PUBLISH_DELTA = """
local live = redis.call('GET', KEYS[1])
if not live then return redis.error_reply('REFUSED nothing is published') end
if live ~= ARGV[1] then
  return redis.error_reply('REFUSED the live version is ' .. live .. ', not ' .. ARGV[1])
end
local raw = redis.call('GET', KEYS[2])
if not raw then return redis.error_reply('REFUSED version ' .. ARGV[1] .. ' has no manifest') end
local model = cjson.decode(raw)['model_version']
if model ~= ARGV[2] then
  return redis.error_reply('REFUSED the live version ' .. live .. ' was built by model ' .. tostring(model) ..
    '; this delta was encoded by ' .. ARGV[2])
end
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], '*', 'seq', seq, 'sha256', ARGV[4], 'payload', ARGV[3])
redis.call('PUBLISH', KEYS[5], 'delta:' .. ARGV[1] .. ':' .. seq)
return seq
"""

#: KEYS: paused, paused_seq, change_seq, events. ARGV: 1 (pause) or 0 (resume), then ad ids.
_SET_PAUSED = """
local seq = redis.call('INCR', KEYS[3])
for i = 2, #ARGV do
  if ARGV[1] == '1' then redis.call('HSET', KEYS[1], ARGV[i], seq) else redis.call('HDEL', KEYS[1], ARGV[i]) end
end
redis.call('SET', KEYS[2], seq)
redis.call('PUBLISH', KEYS[4], 'paused:' .. seq)
return seq
"""


def _refused(exc: Exception) -> DeltaRefused | None:
    text = str(exc)
    return DeltaRefused(text.split("REFUSED ", 1)[1]) if "REFUSED " in text else None


def publish_delta(client: Any, keys: RedisKeys, delta: AdDelta) -> int:
    """Appends `delta` to its base version's chain if that version is live and built by the
    delta's model; returns the change number.

    Raises:
        DeltaRefused: the live version is another one, or its model differs.
    """
    import redis

    payload = delta.to_bytes()
    argv = [delta.base_version, delta.model_version, payload, hashlib.sha256(payload).hexdigest()]
    script_keys = [
        keys.current,
        keys.manifest(delta.base_version),
        keys.change_seq,
        keys.deltas(delta.base_version),
        keys.events,
    ]
    try:
        return int(client.eval(_PUBLISH_DELTA, len(script_keys), *script_keys, *argv))
    except redis.ResponseError as exc:
        refused = _refused(exc)
        if refused is None:
            raise
        raise refused from None


def read_deltas(client: Any, keys: RedisKeys, version: str, after: str = "-") -> list[tuple[str, AdDelta]]:
    """The deltas of `version`'s chain after stream id `after` ("-": all), oldest first, checked.

    Raises:
        ArtifactError: a payload whose checksum or contents are wrong.
    """
    start = after if after == "-" else f"({after}"
    out = []
    for stream_id, fields in client.xrange(keys.deltas(version), min=start, max="+"):
        seq = int(fields[b"seq"])
        payload = fields[b"payload"]
        if hashlib.sha256(payload).hexdigest() != fields[b"sha256"].decode():
            raise ArtifactError(f"delta {seq} of {version}: checksum mismatch")
        out.append((stream_id.decode(), AdDelta.from_bytes(payload, seq)))
    return out


def set_paused(client: Any, keys: RedisKeys, ad_ids: list[int], paused: bool = True) -> int:
    """Pauses (or resumes) ads on every replica, whatever version is live; returns the change number."""
    script_keys = [keys.paused, keys.paused_seq, keys.change_seq, keys.events]
    return int(client.eval(_SET_PAUSED, len(script_keys), *script_keys, "1" if paused else "0", *map(int, ad_ids)))


def read_paused(client: Any, keys: RedisKeys) -> tuple[int, np.ndarray]:
    """(change number of the last pause/resume, paused ad ids) in one round trip."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.paused_seq)
        pipe.hkeys(keys.paused)
        seq, ids = pipe.execute()
    return int(seq or 0), np.array(sorted(int(i) for i in ids), dtype=np.int64)
