"""Dataset loaders: MovieLens-1M (paper and clean protocols), schema-file datasets and a synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

from offline.data.dataset import Dataset, Split
from offline.data.movielens import PROTOCOLS, load_movielens
from offline.data.synthetic import make_synthetic
from offline.data.tabular import SCHEMA_SUFFIXES, load_tabular

__all__ = ["DATASETS", "DATA_DIR_ENV", "Dataset", "Split", "load_dataset", "resolve_data_dir"]

DATASETS = ("movielens-1m", "synthetic")
DATA_DIR_ENV = "PRERANK_DATA_DIR"


def resolve_data_dir(data_dir: Path | str | None, dataset: str) -> Path:
    """`--data-dir` if given, else `$PRERANK_DATA_DIR/<dataset>`, else `./data/<dataset>`."""
    if data_dir is not None:
        return Path(data_dir)
    root = os.environ.get(DATA_DIR_ENV)
    return Path(root) / dataset if root else Path("data") / dataset


def load_dataset(name: str, protocol: str = "paper", data_dir: Path | str | None = None, seed: int = 1023) -> Dataset:
    """Loads a dataset by name, or from a schema file (a path ending in .toml or .json).

    `protocol` applies to MovieLens ("paper" or "clean"); for a schema file, `data_dir` is where
    its data files are (default: beside the schema file) and `seed` seeds the split.
    """
    if name.endswith(SCHEMA_SUFFIXES):
        dataset = load_tabular(Path(name), Path(data_dir) if data_dir is not None else None, seed)
        reference = Path(name).parent / "reference.json"
        if reference.exists() and dataset.name.startswith("world-"):  # a generated world: its true CTR
            from offline.worlds import attach_oracle

            attach_oracle(dataset, reference)
        return dataset
    if name == "synthetic":
        return make_synthetic()
    if name.startswith("synthetic:"):  # synthetic:N[:ROWS][:ids64] -> N ads (serving benchmarks need a large corpus)
        parts = name.split(":")[1:]
        sparse_ids = parts[-1] == "ids64"
        try:
            sizes = [int(part) for part in parts[: len(parts) - sparse_ids]]
        except ValueError:
            raise ValueError(f"dataset {name!r}: write synthetic:N[:ROWS][:ids64] (ads, log rows)") from None
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            raise ValueError(f"dataset {name!r}: write synthetic:N[:ROWS][:ids64] with positive numbers")
        n_ads = sizes[0]
        n_rows = sizes[1] if len(sizes) == 2 else max(100_000, 4 * n_ads)
        return make_synthetic(n_users=5000, n_ads=n_ads, n_rows=n_rows, sparse_ids=sparse_ids)
    if name == "movielens-1m":
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        return load_movielens(resolve_data_dir(data_dir, name), protocol, seed)
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
