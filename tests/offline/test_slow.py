"""Long runs (`python -m pytest -m slow`): full MovieLens-1M training against the recorded table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_movielens_clean_hit_reproduces_the_zoo_table(movielens_dir: Path, tmp_path: Path) -> None:
    """HIT on the clean protocol, seed 1, as the zoo trains it (about 8 minutes on 2 cores)."""
    from offline.data import load_dataset
    from offline.train import TrainConfig, train
    from offline.zoo import RECIPES, Recipe

    rows = json.loads((ROOT / "results" / "zoo" / "zoo.json").read_text())["rows"]
    recorded = next(r for r in rows if r["model"] == "hit" and r["protocol"] == "clean")
    recipe = RECIPES.get("hit", Recipe({}))
    cfg = TrainConfig(epochs=40, batch_size=recipe.batch_size, lr=recipe.lr, seed=1, progress=False)
    result = train(load_dataset("movielens-1m", "clean", movielens_dir), "hit", recipe.model_config, cfg, tmp_path)
    # the 3-seed mean is 0.8848 with std 0.0007: one seed lands within 0.003 of it
    assert result.metrics["test_auc"] == pytest.approx(recorded["auc_mean"], abs=0.003)


def test_the_slow_marker_selects_tests() -> None:
    """`-m slow` is documented: it must select something (and the default run must not)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "tests/offline/test_slow.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert "test_movielens_clean_hit_reproduces_the_zoo_table" in proc.stdout, proc.stdout[-1000:]
