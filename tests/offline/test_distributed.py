"""`prerank train` under torchrun: 2 CPU processes (gloo) against one process.

Two checks that a wrong loss scale or a missing row shard would fail: the averaged DDP gradient
of one step equals the single-process gradient (HIT with BatchNorm, COLD without), and a whole
run under plain SGD, whose steps scale with the gradient (Adam's do not), reaches the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.registry import build_model
from offline.data import load_dataset
from offline.train import TrainConfig, _TrainStep, shard, train
from tests.offline.ddp_worker import L2, ROWS, tiny

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun() -> str:
    return shutil.which("torchrun") or pytest.skip("torchrun not installed")  # type: ignore[return-value]


def _reference_grads(  # type: ignore[type-arg]
    model_name: str, config: dict, world: int, per_shard: bool, l2: float = L2
) -> dict[str, torch.Tensor]:
    """Single-process gradient of the summed loss over the batch: over the whole batch at once, or
    as the sum of each shard's loss (BatchNorm statistics per shard, as each DDP rank computes)."""
    data = tiny()
    torch.manual_seed(0)
    model = build_model(model_name, data.schema, config).train()
    rows = np.arange(ROWS)
    parts = [shard(rows, r, world) for r in range(world)] if per_shard else [rows]
    loss = l2 * model.regularizer()
    for part in parts:
        feats, labels = data.train.batch(part)
        loss = loss + _TrainStep(model, 0.0, 1)(feats, labels)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("model_name", "config", "batch_norm", "mode"),
    [
        ("hit", {"dropout": 0.0}, True, "dense"),
        ("cold", {"dropout": 0.0}, False, "dense"),
        ("hit", {"dropout": 0.0}, True, "sparse"),
    ],
)
def test_one_ddp_step_has_the_single_process_gradient(
    model_name: str, config: dict, batch_norm: bool, mode: str, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    """With "sparse" the tables' sparse gradients bypass DDP and SparseEmbeddings.all_reduce
    averages them: densified, they equal the dense single-process gradient."""
    out = tmp_path / "grads.safetensors"
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(Path(__file__).parent / "ddp_worker.py")]
    done = subprocess.run(
        [*cmd, model_name, json.dumps(config), str(out), mode],
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = load_file(str(out))
    reference = _reference_grads(model_name, config, 2, per_shard=batch_norm, l2=0.0 if mode == "sparse" else L2)
    assert ddp.keys() == reference.keys() and len(ddp) > 5
    for name, grad in reference.items():
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    if batch_norm:  # per-rank BatchNorm statistics: not the full batch's gradient (SyncBatchNorm needs CUDA)
        whole = _reference_grads(model_name, config, 2, per_shard=False)
        assert any(not torch.allclose(whole[n], g, rtol=1e-3, atol=1e-5) for n, g in reference.items())


def test_two_process_ddp_run_under_sgd_matches_single_process(tmp_path: Path) -> None:
    args = ["--dataset", "synthetic", "--model", "cold", "--epochs", "2", "--batch-size", "512", "--no-progress"]
    args += ["--optimizer", "sgd", "--lr", "0.002", "--model-config", '{"dropout": 0.0}']
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "prerank", "train", *args]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test AUC") == 1  # rank 0 reports and writes; rank 1 does neither
    cfg = TrainConfig(epochs=2, batch_size=512, progress=False, optimizer="sgd", lr=0.002)
    single = train(load_dataset("synthetic"), "cold", {"dropout": 0.0}, cfg, tmp_path / "single")
    ddp_w = load_file(str(tmp_path / "ddp" / "weights.safetensors"))
    single_w = load_file(str(tmp_path / "single" / "weights.safetensors"))
    assert ddp_w.keys() == single_w.keys()
    worst = max(float((ddp_w[k] - single_w[k]).abs().max()) for k in ddp_w)
    torch.manual_seed(42)  # the run's seed: how far SGD moved the weights from their initialisation
    init = build_model("cold", load_dataset("synthetic").schema, {"dropout": 0.0}).state_dict()
    moved = max(float((single_w[k] - init[k]).abs().max()) for k in single_w if k in init)
    assert worst < 1e-4 < moved / 100, (worst, moved)
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_metrics["world_size"] == 2 and ddp_metrics["train_config"]["optimizer"] == "sgd"
    assert ddp_metrics["test_auc"] == pytest.approx(single.metrics["test_auc"], abs=1e-4)
