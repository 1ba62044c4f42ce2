"""Columnar feature tables: one row per entity (user or ad), gathered into model batches.

Training rows, the served ad corpus and the user feature store all use this one layout:
sparse ids and dense floats as arrays, sequences as CSR (values + row offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.features import Features, FeatureSpec, Jagged, Kind, mix64

__all__ = ["FeatureTable"]

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@dataclass
class FeatureTable:
    """Features of `n_rows` entities.

    Attributes:
        sparse: name -> int64 ids (n,).
        dense: name -> float32 values (n,).
        sequences: name -> (values int64 (T,), offsets int64 (n + 1,)).
    """

    n_rows: int
    sparse: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, col in (*self.sparse.items(), *self.dense.items()):
            if len(col) != self.n_rows:
                raise ValueError(f"column {name!r} has {len(col)} rows, expected {self.n_rows}")
        for name, (_, offsets) in self.sequences.items():
            if len(offsets) != self.n_rows + 1:
                raise ValueError(f"sequence {name!r} has {len(offsets) - 1} rows, expected {self.n_rows}")

    def take(self, rows: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> Features:
        """Gathers `rows` into model inputs (sparse (B,), dense (B,), sequences as `Jagged`)."""
        idx = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows, dtype=np.int64)
        out: Features = {}
        for name, col in self.sparse.items():
            out[name] = torch.from_numpy(col[idx]).to(device)
        for name, col in self.dense.items():
            out[name] = torch.from_numpy(col[idx]).to(device)
        for name, (values, offsets) in self.sequences.items():
            starts, ends = offsets[idx], offsets[idx + 1]
            lengths = ends - starts
            bag_offsets = np.zeros(len(idx), dtype=np.int64)
            np.cumsum(lengths[:-1], out=bag_offsets[1:])
            flat = np.repeat(starts - bag_offsets, lengths) + np.arange(lengths.sum())
            out[name] = Jagged(torch.from_numpy(values[flat]).to(device), torch.from_numpy(bag_offsets).to(device))
        return out

    def take_rows(self, rows: np.ndarray) -> FeatureTable:
        """A new table holding `rows` of this one, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = FeatureTable(len(rows))
        out.sparse = {k: v[rows] for k, v in self.sparse.items()}
        out.dense = {k: v[rows] for k, v in self.dense.items()}
        for name, (values, offsets) in self.sequences.items():
            lengths = offsets[rows + 1] - offsets[rows]
            new_offsets = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            flat = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
            out.sequences[name] = (values[flat], new_offsets)
        return out

    def select(self, fields: tuple[FeatureSpec, ...]) -> FeatureTable:
        """A view with only the given fields (all must be present)."""
        names = {f.name for f in fields}
        missing = names - set(self.sparse) - set(self.dense) - set(self.sequences)
        if missing:
            raise KeyError(f"feature table lacks fields {sorted(missing)}")
        return FeatureTable(
            self.n_rows,
            {k: v for k, v in self.sparse.items() if k in names},
            {k: v for k, v in self.dense.items() if k in names},
            {k: v for k, v in self.sequences.items() if k in names},
        )

    def row_hashes(self) -> np.ndarray:
        """A 64-bit digest of each row's values (uint64 (n,)), vectorised: rows with equal features
        hash equal, so a delta export finds the ads whose features changed since the live version."""
        with np.errstate(over="ignore"):
            h = np.full(self.n_rows, _FNV_OFFSET, np.uint64)
            for _, col in sorted(self.sparse.items()):
                h = (h ^ mix64(col.astype(np.int64).view(np.uint64))) * _FNV_PRIME
            for _, col in sorted(self.dense.items()):
                h = (h ^ mix64(col.astype(np.float32).view(np.uint32).astype(np.uint64))) * _FNV_PRIME
            for _, (values, offsets) in sorted(self.sequences.items()):
                lengths = np.diff(offsets)
                position = np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
                token = mix64(values.astype(np.int64).view(np.uint64) ^ (position.view(np.uint64) << np.uint64(40)))
                total = np.concatenate([np.zeros(1, np.uint64), np.cumsum(token, dtype=np.uint64)])
                h = (h ^ (total[offsets[1:]] - total[offsets[:-1]])) * _FNV_PRIME
                h = (h ^ mix64(lengths.astype(np.uint64))) * _FNV_PRIME
        return h

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat tensor dict for safetensors, keys `prefix/kind/name[/part]`."""
        out: dict[str, torch.Tensor] = {}
        for name, col in self.sparse.items():
            out[f"{prefix}/sparse/{name}"] = torch.from_numpy(np.ascontiguousarray(col))
        for name, col in self.dense.items():
            out[f"{prefix}/dense/{name}"] = torch.from_numpy(np.ascontiguousarray(col))
        for name, (values, offsets) in self.sequences.items():
            out[f"{prefix}/sequence/{name}/values"] = torch.from_numpy(np.ascontiguousarray(values))
            out[f"{prefix}/sequence/{name}/offsets"] = torch.from_numpy(np.ascontiguousarray(offsets))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, n_rows: int) -> FeatureTable:
        """Inverse of `to_tensors`."""
        table = cls(n_rows)
        seq_parts: dict[str, dict[str, np.ndarray]] = {}
        for key, t in tensors.items():
            parts = key.split("/")
            if parts[0] != prefix:
                continue
            kind, name = parts[1], parts[2]
            if kind == Kind.SPARSE.value:
                table.sparse[name] = t.numpy()
            elif kind == Kind.DENSE.value:
                table.dense[name] = t.numpy()
            elif kind == Kind.SEQUENCE.value:
                seq_parts.setdefault(name, {})[parts[3]] = t.numpy()
        for name, p in seq_parts.items():
            table.sequences[name] = (p["values"], p["offsets"])
        table.__post_init__()
        return table
