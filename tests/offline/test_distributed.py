"""`prerank train` under torchrun: 2 CPU processes (gloo) reach the single-process model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from offline.data import load_dataset
from offline.train import TrainConfig, train

ARGS = ["--dataset", "synthetic", "--model", "cold", "--epochs", "2", "--batch-size", "512", "--no-progress"]
CONFIG = '{"dropout": 0.0}'  # COLD has no BatchNorm; without dropout the two runs see the same function


@pytest.mark.integration
def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "prerank", "train", *ARGS]
    done = subprocess.run(
        [*cmd, "--model-config", CONFIG, "--out", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test AUC") == 1  # rank 0 reports and writes; rank 1 does neither

    single = train(
        load_dataset("synthetic"),
        "cold",
        {"dropout": 0.0},
        TrainConfig(epochs=2, batch_size=512, progress=False),
        tmp_path / "single",
    )
    ddp_w, single_w = (
        load_file(str(tmp_path / "ddp" / "weights.safetensors")),
        load_file(str(tmp_path / "single" / "weights.safetensors")),
    )
    assert ddp_w.keys() == single_w.keys()
    worst = max(float((ddp_w[k] - single_w[k]).abs().max()) for k in ddp_w)
    assert worst < 1e-4, worst
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_metrics["world_size"] == 2 and single.metrics["world_size"] == 1
    assert ddp_metrics["test_auc"] == pytest.approx(single.metrics["test_auc"], abs=1e-4)
