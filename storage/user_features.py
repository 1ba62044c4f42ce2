"""The per-request user feature store: one packed binary row per user in bucketed Redis hashes.

A replica that holds the whole user feature table grows with the user count (the table plus a
Python dict of user ids). In the per-request mode the publisher writes each user's snapshot
features once into Redis, and a replica reads the requesting user's row (one HGET, pipelined
with the online row's GET) and keeps a bounded LRU of decoded rows: replica memory no longer
depends on the user count.

Row format (little-endian, no header; the layout lives in the version's manifest):
the sparse fields' ids and the dense fields' float32 values in layout order, each at its
layout dtype, then for each sequence field a uint16 length followed by that many ids.

Rows are grouped into `buckets` hashes, `<prefix>:version:<v>:users:<bucket>` with
bucket = crc32(user id) mod buckets, about `USERS_PER_BUCKET` users each, so that Redis keeps
each hash as a compact listpack (per-key overhead is paid once per bucket, not per user) as long
as the rows fit its `hash-max-listpack-value` (see docker-compose.yml).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.features import Kind
from models.tables import FeatureTable

__all__ = [
    "REPLICATED_MAX_USERS",
    "USERS_PER_BUCKET",
    "UserRowCodec",
    "bucket_of",
    "choose_user_store",
    "n_buckets",
]

#: Mean users per hash bucket: under Redis's default hash-max-listpack-entries (128) with room
#: for the spread of a Poisson count (at 780k buckets the fullest holds ~110).
USERS_PER_BUCKET = 64
#: `auto` publishes the user table into every replica's memory up to this many users, and
#: per-request rows above it (see the README's user-store section for the measured costs).
REPLICATED_MAX_USERS = 1_000_000
_MAX_SEQUENCE = np.iinfo(np.uint16).max


def choose_user_store(mode: str, n_users: int) -> str:
    """`replicated` or `per-request` for a publish mode (`auto` decides by the user count)."""
    if mode == "auto":
        return "per-request" if n_users > REPLICATED_MAX_USERS else "replicated"
    if mode not in ("replicated", "per-request"):
        raise ValueError(f"user store mode must be auto, replicated or per-request, got {mode!r}")
    return mode


def bucket_of(user_id: str, buckets: int) -> int:
    """The hash bucket of a user id (crc32, stable across processes and languages)."""
    return zlib.crc32(user_id.encode()) % buckets


def n_buckets(n_users: int) -> int:
    """Hash buckets for `n_users` users (`USERS_PER_BUCKET` each on average)."""
    return max(1, math.ceil(n_users / USERS_PER_BUCKET))


def _id_dtype(values: np.ndarray) -> str:
    """The narrowest little-endian integer type holding every value."""
    if len(values) == 0:
        return "<i2"
    low, high = int(values.min()), int(values.max())
    for dtype in ("<i2", "<i4"):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return "<i8"


@dataclass(frozen=True)
class UserRowCodec:
    """Packs user feature rows to bytes and back.

    Attributes:
        fixed: (name, kind, dtype) of the sparse and dense fields, in row order.
        sequences: (name, dtype) of the sequence fields, in row order.
    """

    fixed: tuple[tuple[str, str, str], ...]
    sequences: tuple[tuple[str, str], ...]

    @classmethod
    def for_table(cls, table: FeatureTable) -> UserRowCodec:
        """The narrowest layout that holds every value of `table` (fields in name order)."""
        fixed = [(name, Kind.SPARSE.value, _id_dtype(col)) for name, col in sorted(table.sparse.items())]
        fixed += [(name, Kind.DENSE.value, "<f4") for name in sorted(table.dense)]
        sequences = []
        for name, (values, offsets) in sorted(table.sequences.items()):
            if len(offsets) > 1 and int(np.diff(offsets).max()) > _MAX_SEQUENCE:
                raise ValueError(f"sequence {name!r} has rows longer than {_MAX_SEQUENCE} ids")
            sequences.append((name, _id_dtype(values)))
        return cls(tuple(fixed), tuple(sequences))

    def to_json(self) -> dict[str, Any]:
        return {"fixed": [list(f) for f in self.fixed], "sequences": [list(s) for s in self.sequences]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserRowCodec:
        return cls(
            tuple((str(n), str(k), str(d)) for n, k, d in data["fixed"]),
            tuple((str(n), str(d)) for n, d in data["sequences"]),
        )

    @property
    def _record(self) -> np.dtype:
        return np.dtype([(name, dtype) for name, _, dtype in self.fixed])

    def pack(self, table: FeatureTable, rows: np.ndarray) -> list[bytes]:
        """The packed rows `rows` (indices) of `table`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        record = np.empty(len(rows), self._record)
        for name, kind, dtype in self.fixed:
            column = table.sparse[name] if kind == Kind.SPARSE.value else table.dense[name]
            record[name] = column[rows].astype(dtype)
        fixed = record.view(np.uint8).reshape(len(rows), record.dtype.itemsize).tobytes()
        width = record.dtype.itemsize
        if not self.sequences:
            return [fixed[i * width : (i + 1) * width] for i in range(len(rows))]
        seqs = []
        for name, dtype in self.sequences:
            values, offsets = table.sequences[name]
            seqs.append((values.astype(dtype), offsets, np.diff(offsets).astype("<u2")))
        out = []
        for i, row in enumerate(rows.tolist()):
            parts = [fixed[i * width : (i + 1) * width]]
            for values, offsets, lengths in seqs:
                parts.append(lengths[row].tobytes())
                parts.append(values[offsets[row] : offsets[row + 1]].tobytes())
            out.append(b"".join(parts))
        return out

    def unpack(self, raw: bytes) -> FeatureTable:
        """One packed row as a one-row table (int64 ids, float32 values, as the model reads them).

        Raises:
            ValueError: the bytes do not match the layout (a damaged row).
        """
        record = self._record
        if len(raw) < record.itemsize:
            raise ValueError(f"user row of {len(raw)} bytes is shorter than its {record.itemsize}-byte fixed part")
        table = FeatureTable(1)
        if record.itemsize:
            fields = np.frombuffer(raw, record, count=1)
            for name, kind, _ in self.fixed:
                if kind == Kind.SPARSE.value:
                    table.sparse[name] = fields[name].astype(np.int64)
                else:
                    table.dense[name] = fields[name].astype(np.float32)
        at = record.itemsize
        for name, dtype in self.sequences:
            if at + 2 > len(raw):
                raise ValueError(f"user row ends before sequence {name!r}")
            length = int(np.frombuffer(raw, "<u2", count=1, offset=at)[0])
            at += 2
            width = np.dtype(dtype).itemsize
            if at + length * width > len(raw):
                raise ValueError(f"user row ends inside sequence {name!r}")
            values = np.frombuffer(raw, dtype, count=length, offset=at).astype(np.int64)
            at += length * width
            table.sequences[name] = (values, np.array([0, length], np.int64))
        if at != len(raw):
            raise ValueError(f"user row has {len(raw) - at} trailing bytes")
        return table
