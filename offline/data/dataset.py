"""The dataset object every loader returns and the trainer and exporter consume."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from models.features import Features, FeatureSchema, Vocabulary
from models.tables import FeatureTable

__all__ = ["Batch", "Dataset", "Split", "describe_splits", "concat_tables", "csr_from_lists", "files_sha256"]


class Batch(NamedTuple):
    """One training step's inputs on one rank: features, labels, the split positions of the rows
    (None where the split is streamed), and the number of rows the step covers on all ranks."""

    features: Features
    labels: torch.Tensor
    rows: np.ndarray | None
    size: int


@dataclass
class Split:
    """Labelled rows that point into a user table and an ad table."""

    user_rows: np.ndarray
    ad_rows: np.ndarray
    labels: np.ndarray
    users: FeatureTable
    ads: FeatureTable
    #: The user (by key) of each row, where a user-table row is a user *and* a context (schema
    #: files with context fields); None: user rows are users.
    user_keys: np.ndarray | None = None

    @property
    def user_groups(self) -> np.ndarray:
        """Each row's user, for per-user metrics (GAUC)."""
        return self.user_rows if self.user_keys is None else self.user_keys

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, device: str = "cpu") -> tuple[Features, torch.Tensor]:
        """Model inputs and labels (B,) for the rows `idx`."""
        feats = self.users.take(self.user_rows[idx], device)
        feats.update(self.ads.take(self.ad_rows[idx], device))
        return feats, torch.from_numpy(self.labels[idx]).to(device)

    def batches(self, batch_size: int, device: str = "cpu") -> Iterator[Features]:
        """Model inputs for every row in order, `batch_size` rows at a time (for inference)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))), device)[0]

    def epoch(
        self,
        rng: np.random.Generator,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        negative_rate: float = 1.0,
        device: str = "cpu",
    ) -> Iterator[Batch]:
        """One pass in a random order (negatives kept with probability `negative_rate`), each
        batch_size-row step split across `world` ranks (rank r takes every world-th row)."""
        order = rng.permutation(len(self))
        if negative_rate < 1.0:  # negative down-sampling, drawn anew each epoch
            positive = self.labels[order] > 0.5
            order = order[positive | (rng.random(len(order)) < negative_rate)]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < world:  # a tail too small to give every rank a row
                continue
            mine = rows[rank::world]
            feats, labels = self.batch(mine, device)
            yield Batch(feats, labels, mine, len(rows))

    def subset(self, idx: np.ndarray) -> Split:
        keys = None if self.user_keys is None else self.user_keys[idx]
        return Split(self.user_rows[idx], self.ad_rows[idx], self.labels[idx], self.users, self.ads, keys)


@dataclass
class Dataset:
    """Train / validation / test splits plus the serving snapshot of users and ads.

    The serving snapshot is what the exporter publishes: the latest known feature values of
    every user (the user feature store) and of every ad (fed through the ad tower).
    """

    name: str
    protocol: str
    schema: FeatureSchema
    vocabs: dict[str, Vocabulary]
    train: Split
    valid: Split
    test: Split
    user_keys: list[str]
    users: FeatureTable
    ad_ids: np.ndarray
    ads: FeatureTable
    ad_bids: np.ndarray
    checksum: str
    info: dict[str, Any] = field(default_factory=dict)
    #: The true click probability of (user row, ad row) pairs, where the data was generated with a
    #: known one (synthetic worlds); None for logged data.
    oracle: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)
    #: For schema-file data: the log row each user-table / ad-table row was taken from.
    user_source_rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    ad_source_rows: np.ndarray | None = field(default=None, repr=False, compare=False)

    def without(self, names: Iterable[str]) -> Dataset:
        """The same data with the named fields left out of the schema (for feature ablations)."""
        drop = set(names)
        unknown = drop - {f.name for f in self.schema.features}
        if unknown:
            raise ValueError(f"cannot drop {sorted(unknown)}: not fields of {self.name}")
        kept = tuple(f for f in self.schema.features if f.name not in drop)
        used = {f.vocab for f in kept if f.vocab}
        schema = FeatureSchema(kept, {k: v for k, v in self.schema.vocab_sizes.items() if k in used})
        info = {**self.info, "dropped_features": sorted(drop)}
        vocabs = {k: v for k, v in self.vocabs.items() if k in used}
        return dataclasses.replace(self, schema=schema, vocabs=vocabs, info=info)

    def describe(self) -> dict[str, Any]:
        """What goes into artifact and results metadata."""
        return describe_splits(self, float(self.train.labels.mean()))


def describe_splits(dataset: Any, train_positive_rate: float) -> dict[str, Any]:
    """Artifact and results metadata of a dataset with train / valid / test splits (in memory or streamed)."""
    return {
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "data_sha256": dataset.checksum,
        "rows": {"train": len(dataset.train), "valid": len(dataset.valid), "test": len(dataset.test)},
        "positive_rate": {"train": train_positive_rate, "test": float(dataset.test.labels.mean())},
        **dataset.info,
    }


def files_sha256(paths: Iterable[Path]) -> str:
    """One digest over the named files' bytes (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def csr_from_lists(index: pd.Index, groups: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """CSR (values, offsets) with one row per `index` entry from a Series of id arrays keyed by it."""
    lists = groups.reindex(index)
    lengths = np.fromiter((0 if not isinstance(v, np.ndarray) else len(v) for v in lists), np.int64, len(index))
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    parts = [v for v in lists if isinstance(v, np.ndarray) and len(v)]
    values = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return values, offsets


def concat_tables(tables: list[FeatureTable]) -> FeatureTable:
    """Stacks tables with the same fields row-wise."""
    first = tables[0]
    out = FeatureTable(sum(t.n_rows for t in tables))
    for name in first.sparse:
        out.sparse[name] = np.concatenate([t.sparse[name] for t in tables])
    for name in first.dense:
        out.dense[name] = np.concatenate([t.dense[name] for t in tables])
    for name in first.sequences:
        values, offsets, base = [], [np.zeros(1, np.int64)], 0
        for t in tables:
            v, o = t.sequences[name]
            values.append(v)
            offsets.append(o[1:] + base)
            base += len(v)
        out.sequences[name] = (np.concatenate(values), np.concatenate(offsets))
    out.__post_init__()
    return out
