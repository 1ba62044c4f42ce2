"""Shared fixtures: a tiny synthetic dataset, a trained tiny HIT artifact and a published store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from offline.data import Dataset
from offline.data.synthetic import make_synthetic
from offline.export import export
from offline.train import TrainConfig, TrainResult, train

SHARED_DATA = Path(os.environ.get("PRERANK_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
MOVIELENS = SHARED_DATA / "movielens-1m"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> Dataset:
    return make_synthetic(n_users=300, n_ads=120, n_rows=6000, seed=3)


@pytest.fixture(scope="session")
def tiny_hit(tiny: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("artifact") / "hit"
    return train(tiny, "hit", {}, TrainConfig(epochs=6, batch_size=128, lr=3e-3, patience=3, progress=False), out)


@pytest.fixture(scope="session")
def tiny_dssm(tiny: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("artifact") / "dssm"
    return train(
        tiny, "dssm", {"temperature": 5.0}, TrainConfig(epochs=4, batch_size=128, lr=3e-3, progress=False), out
    )


@pytest.fixture(scope="session")
def store(tiny: Dataset, tiny_hit: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    assert tiny_hit.artifact is not None
    export(tiny_hit.artifact, tiny, f"local:{root}")
    return root


@pytest.fixture
def movielens_dir() -> Path:
    if not (MOVIELENS / "users.dat").exists():
        pytest.skip(f"MovieLens-1M not found under {SHARED_DATA}")
    return MOVIELENS
