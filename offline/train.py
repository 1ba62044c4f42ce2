"""Training with early stopping on validation AUC, and the artifact it writes."""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.artifact import save_artifact, write_json
from models.base import PrerankModel
from models.provenance import code_version
from models.registry import build_model, config_from_dict
from offline.data import Dataset, Split
from offline.metrics import auc, logloss, rela_impr

__all__ = ["TrainConfig", "TrainResult", "evaluate", "load_baseline", "predict", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (model hyper-parameters live in the model's own config).

    Args:
        epochs: maximum number of epochs.
        batch_size: rows per Adam step.
        lr: Adam learning rate.
        patience: epochs without a validation-AUC gain before stopping.
        l2: weight of the sum of squared embedding entries (reference code: 1e-5).
        seed: seeds model init and batch order.
        eval_batch_size: rows per inference batch.
        progress: show a progress bar.
    """

    epochs: int = 30
    batch_size: int = 2048
    lr: float = 1e-3
    patience: int = 2
    l2: float = 1e-5
    seed: int = 42
    eval_batch_size: int = 32768
    progress: bool = True


@dataclass
class TrainResult:
    model: PrerankModel
    metrics: dict[str, Any]
    artifact: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@torch.inference_mode()
def predict(model: PrerankModel, split: Split, batch_size: int = 32768) -> np.ndarray:
    """pCTR for every row of a split (model in eval mode)."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        feats, _ = split.batch(np.arange(start, min(start + batch_size, len(split))))
        out.append(torch.sigmoid(model(feats)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(model: PrerankModel, split: Split, batch_size: int = 32768) -> dict[str, float]:
    probs = predict(model, split, batch_size)
    return {"auc": auc(split.labels, probs), "logloss": logloss(split.labels, probs)}


def _loss(model: PrerankModel, feats: dict[str, Any], labels: torch.Tensor, l2: float) -> torch.Tensor:
    logits, aux = model.forward_train(feats)
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    if l2:
        loss = loss + l2 * model.regularizer()
    if aux:
        loss = loss + model.auxiliary_loss(aux, labels)
    return loss


def train(
    dataset: Dataset,
    model_name: str,
    model_config: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    out_dir: Path | None = None,
    baseline: dict[str, Any] | None = None,
) -> TrainResult:
    """Trains a registered model on `dataset`; writes an artifact and metrics.json to `out_dir`.

    Args:
        dataset: splits and schema.
        model_name: registry name ("hit", "dssm", ...).
        model_config: overrides of the model's config fields.
        config: optimisation settings.
        out_dir: artifact directory (None: nothing written).
        baseline: a DSSM run's metrics.json, for RelaImpr.

    Returns:
        TrainResult with the best-validation model and its metrics.
    """
    cfg = config or TrainConfig()
    version_of_code = code_version()  # at the start: the code that trains, not what is edited meanwhile
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model_cfg = config_from_dict(model_name, model_config or {})
    model = build_model(model_name, dataset.schema, model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best_auc, best_state, best_epoch, bad = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(dataset.train))
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not cfg.progress, leave=False, file=sys.stderr)
        total = 0.0
        for start in bar:
            feats, labels = dataset.train.batch(order[start : start + cfg.batch_size])
            loss = _loss(model, feats, labels, cfg.l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, dataset.valid, cfg.eval_batch_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(order),
                "train_seconds": train_seconds,
                "valid_auc": val["auc"],
                "valid_logloss": val["logloss"],
            }
        )
        log.info(
            "epoch %d  loss %.4f  valid auc %.4f  logloss %.4f  (%.1fs)",
            epoch,
            total / len(order),
            val["auc"],
            val["logloss"],
            train_seconds,
        )
        if val["auc"] > best_auc:
            best_auc, best_state, best_epoch, bad = val["auc"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    test = evaluate(model, dataset.test, cfg.eval_batch_size)
    metrics: dict[str, Any] = {
        "model": model_name,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "valid_auc": best_auc,
        "best_epoch": best_epoch,
        "epochs": len(history),
        "wall_seconds": time.perf_counter() - started,
        "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history])),
        "seed": cfg.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "train_config": asdict(cfg),
        "model_config": asdict(model_cfg),
        **dataset.describe(),
        "code_version": version_of_code,
        "torch": torch.__version__,
    }
    if baseline is not None:
        metrics["baseline"] = {"model": baseline.get("model"), "test_auc": baseline["test_auc"]}
        metrics["rela_impr_pct"] = rela_impr(test["auc"], float(baseline["test_auc"]))
    log.info("test auc %.4f  logloss %.4f  (best epoch %d)", test["auc"], test["logloss"], best_epoch)
    result = TrainResult(model, metrics, history=history)
    if out_dir is not None:
        version = save_artifact(out_dir, model, dataset.vocabs, {k: v for k, v in metrics.items() if k != "history"})
        metrics["model_version"] = version
        write_json(out_dir / "metrics.json", metrics)
        result.artifact = out_dir
    return result


def load_baseline(path: Path) -> dict[str, Any]:
    """Reads a metrics.json (or an artifact directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    data: dict[str, Any] = json.loads(path.read_text())
    if "test_auc" not in data:
        raise ValueError(f"{path} has no test_auc")
    return data
