"""Training with early stopping on validation AUC, and the artifact it writes."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.artifact import save_artifact, write_json
from models.base import PrerankModel
from models.calibration import Calibrator
from models.features import Features, FeatureSchema, Jagged, Kind
from models.layers import RARE_IDS
from models.losses import auxiliary_loss
from models.provenance import code_version, machine
from models.registry import build_model, config_from_dict, model_class
from offline.calibrate import fit_calibrator
from offline.data import Dataset, Split
from offline.data.stream import StreamingDataset, StreamingSplit
from offline.metrics import auc, ece, logloss, rela_impr
from offline.sparse import Optimizers, SparseEmbeddings

__all__ = [
    "RARE_ID_ROWS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_baseline",
    "predict",
    "rare_id_fields",
    "resolve_model_config",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (model hyper-parameters live in the model's own config).

    Args:
        epochs: maximum number of epochs.
        batch_size: rows per Adam step.
        lr: learning rate.
        optimizer: "adam" (the default) or "sgd" (plain SGD; its steps scale with the gradient, so
            the DDP equivalence test can see a wrong loss scale).
        patience: epochs without a validation-AUC gain before stopping.
        l2: weight of the sum of squared embedding entries per step (reference code: 1e-5).
        embedding_decay: a Gaussian prior on every embedding entry, in MAP form: the whole-table sum
            of squares weighs `embedding_decay / n_train` per training row, i.e. once per epoch in
            all, so it does not fade as the log grows. It shrinks ids with few rows towards 0
            (their OOV-like start) and leaves ids with many rows to their data.
        id_dropout: during training, each sparse id and each sequence token is replaced by the OOV
            id 0 with this probability, so a model learns what an id's other fields say about it
            (the long tail) instead of memorising ids.
        distill_from: an artifact (typically the DCN ranking reference) whose calibrated pCTR of each
            training row is a soft label next to the click: loss = BCE(click) + distill_weight *
            BCE(teacher pCTR); "" (the default) trains on clicks alone.
        distill_weight: the soft labels' weight.
        lr_decay: on an epoch without a validation gain the learning rate is multiplied by this
            (1: constant) and training goes on from the best state so far.
        seed: seeds model init and batch order.
        eval_batch_size: rows per inference batch.
        progress: show a progress bar.
        device: "cpu" or "cuda" (under torchrun: "cuda" means cuda:LOCAL_RANK).
        calibration: fit a logit -> pCTR calibrator on the validation split after training:
            "auto" (identity, Platt or isotonic, chosen by cross-fitted validation LogLoss), one of
            those three, or "none" (no calibrator in the artifact).
        negative_rate: keep each negative training row with this probability per epoch (1: all);
            the calibrator's offset log(rate) corrects the learned base rate back.
        max_steps_per_epoch: end an epoch after this many steps (0: a full pass); for logs whose
            epoch does not fit a sitting (a streamed epoch resumes nowhere: the next one reshuffles).
        sparse_embeddings: sparse embedding gradients (SparseAdam on the tables, Adam on the rest;
            plain SGD takes them as they are) and the L2 of the looked-up rows only, so a step's
            cost does not grow with the vocabulary (offline.sparse).
        drop_features: schema fields the model leaves out (`Dataset.without`): feature ablations,
            and the context fields `prerank tune` found to hurt on the validation rows.
    """

    epochs: int = 30
    batch_size: int = 2048
    lr: float = 1e-3
    optimizer: str = "adam"
    calibration: str = "none"
    negative_rate: float = 1.0
    sparse_embeddings: bool = False
    max_steps_per_epoch: int = 0
    patience: int = 2
    l2: float = 1e-5
    embedding_decay: float = 0.0
    id_dropout: float = 0.0
    lr_decay: float = 1.0
    distill_from: str = ""
    distill_weight: float = 1.0
    seed: int = 42
    eval_batch_size: int = 32768
    progress: bool = True
    device: str = "cpu"
    drop_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_features", tuple(self.drop_features))  # a JSON list from a file


@dataclass
class TrainResult:
    model: PrerankModel
    metrics: dict[str, Any]
    artifact: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@torch.inference_mode()
def predict_logits(model: PrerankModel, split: Split | StreamingSplit, batch_size: int = 32768) -> np.ndarray:
    """Raw logits for every row of a split (model in eval mode, on the model's device)."""
    model.eval()
    device = str(next(model.parameters()).device)
    out = [model(feats).float().cpu().numpy() for feats in split.batches(batch_size, device)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.inference_mode()
def predict(model: PrerankModel, split: Split | StreamingSplit, batch_size: int = 32768) -> np.ndarray:
    """Uncalibrated pCTR (sigmoid of the logit) for every row of a split."""
    return torch.sigmoid(torch.from_numpy(predict_logits(model, split, batch_size))).numpy()


def evaluate(model: PrerankModel, split: Split | StreamingSplit, batch_size: int = 32768) -> dict[str, float]:
    probs = predict(model, split, batch_size)
    return {"auc": auc(split.labels, probs), "logloss": logloss(split.labels, probs)}


class _TrainStep(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel can wrap it.

    Under DDP each rank holds 1/world of every batch and DDP averages gradients over ranks; the
    loss is scaled by `world` so the averaged gradient equals the single-process gradient of the
    summed loss over the whole batch.
    """

    def __init__(
        self, model: PrerankModel, l2: float, world: int = 1, regularizer: Callable[[], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        self.model, self.l2, self.world = model, l2, world
        self.regularizer = regularizer or model.regularizer

    def forward(
        self, feats: dict[str, Any], labels: torch.Tensor, soft: torch.Tensor | None = None, soft_weight: float = 0.0
    ) -> torch.Tensor:
        logits, aux = self.model.forward_train(feats)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        if soft is not None:  # distillation: the teacher's probabilities as soft labels
            loss = loss + soft_weight * F.binary_cross_entropy_with_logits(logits, soft, reduction="sum")
        if aux:
            loss = loss + auxiliary_loss(self.model, aux, labels)
        if self.l2:  # the regulariser is not split across ranks: each adds 1/world of it
            loss = loss + self.l2 * self.regularizer().to(loss.device) / self.world
        return loss * self.world


#: A sparse field whose ids have a median of fewer training rows than this is a "rare id" field:
#: the per-user or per-ad ids of a long-tailed log, which a network memorises instead of learning.
RARE_ID_ROWS = 20


def rare_id_fields(dataset: Dataset | StreamingDataset, max_median_rows: int = RARE_ID_ROWS) -> tuple[str, ...]:
    """Sparse fields whose ids have a median of fewer than `max_median_rows` training rows.

    Each side (user with context, ad) keeps at least one network input: where every input of a
    side is a rare id field, the one with the most rows per id stays in the network.
    """
    if isinstance(dataset, StreamingDataset):
        raise ValueError('"wide": "rare-ids" counts rows per id in memory (name the fields when streaming)')
    split = dataset.train
    medians: dict[str, float] = {}
    for table, rows in ((split.users, split.user_rows), (split.ads, split.ad_rows)):
        for name, column in table.sparse.items():
            counts = np.bincount(column[rows])
            medians[name] = float(np.median(counts[counts > 0])) if counts.any() else float("inf")
    schema = dataset.schema
    out = []
    for side in (schema.user_fields, schema.ad_fields):
        rare = [f.name for f in side if medians.get(f.name, float("inf")) < max_median_rows]
        if rare and len(rare) == len(side):
            rare.remove(max(rare, key=lambda name: medians[name]))
        out.extend(rare)
    return tuple(out)


def resolve_model_config(
    dataset: Dataset | StreamingDataset, model_name: str, model_config: dict[str, Any]
) -> dict[str, Any]:
    """The model config training builds, with `wide` resolved to field names.

    A model with a linear part (HIT, COLD, DCN, DeepFM, LR) sends the dataset's rare id fields
    (`rare_id_fields`) to it by default, so per-user and per-ad ids of a long-tailed log become
    per-id biases instead of network inputs; HIT's linear part is switched on when there are any.
    `"wide": []` (or HIT's `"linear": false`) keeps every field in the network. On a log where no
    field is rare (MovieLens-1M) the model is the one without these keys. A streamed log is not
    counted in memory: it defaults to no wide fields, and "rare-ids" is an error there.
    """
    cfg = dict(model_config)
    if "wide" not in {f.name for f in dataclasses.fields(model_class(model_name).config_class)}:
        return cfg
    if "wide" not in cfg and (cfg.get("linear") is False or isinstance(dataset, StreamingDataset)):
        cfg["wide"] = []
    if cfg.setdefault("wide", RARE_IDS) == RARE_IDS:
        cfg["wide"] = list(rare_id_fields(dataset))
        if cfg["wide"]:
            cfg.setdefault("linear", True)
            log.info("wide (linear part only, fewer than %d training rows per id): %s", RARE_ID_ROWS, cfg["wide"])
    return cfg


OPTIMIZERS = ("adam", "sgd")


def _optimizer(cfg: TrainConfig, model: nn.Module, sparse: SparseEmbeddings | None = None) -> Any:
    if cfg.optimizer == "adam" and sparse is not None:
        return Optimizers(model, sparse, cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def _teacher_probabilities(cfg: TrainConfig, dataset: Dataset | StreamingDataset) -> np.ndarray | None:
    """The distillation teacher's calibrated pCTR of every training row, or None without a teacher."""
    if not cfg.distill_from:
        return None
    if isinstance(dataset, StreamingDataset):
        raise ValueError("distill_from needs the training rows in memory (it is not supported with streaming)")
    from models.artifact import load_artifact

    bundle = load_artifact(Path(cfg.distill_from))
    if bundle.schema.features != dataset.schema.features:
        missing = sorted({f.name for f in bundle.schema.features} - {f.name for f in dataset.schema.features})
        if missing:
            raise ValueError(f"distill_from {cfg.distill_from}: the teacher reads fields the data lacks: {missing}")
    logits = predict_logits(bundle.model, dataset.train, cfg.eval_batch_size)
    return bundle.calibrator.probabilities(logits).astype(np.float32)


def _scale_lr(optimizer: Any, factor: float) -> None:
    for part in getattr(optimizer, "parts", [optimizer]):
        for group in part.param_groups:
            group["lr"] *= factor


def drop_ids(feats: Features, schema: FeatureSchema, rate: float, generator: torch.Generator) -> Features:
    """The batch with each sparse id and sequence token replaced by 0 (OOV) with probability `rate`."""
    out = dict(feats)
    for f in schema.features:
        value = feats.get(f.name)
        if f.kind is Kind.DENSE or value is None:
            continue
        ids = value.values if isinstance(value, Jagged) else value
        keep = torch.rand(ids.shape, generator=generator, device=ids.device) >= rate
        dropped = ids * keep
        out[f.name] = Jagged(dropped, value.offsets) if isinstance(value, Jagged) else dropped
    return out


def shard(rows: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The rows of one batch that rank `rank` of `world` trains on (every world-th row)."""
    return rows[rank::world]


def sync_batch_norm(model: nn.Module, device: str, world: int) -> nn.Module:
    """Under DDP on CUDA, BatchNorm layers become SyncBatchNorm (statistics over the whole batch).

    SyncBatchNorm runs on GPUs only; on CPU (gloo) each rank normalises with its own shard's
    statistics, which is what a BatchNorm model's DDP gradient then equals (tested).
    """
    if world > 1 and device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("BatchNorm under DDP on CPU: batch statistics are per rank (SyncBatchNorm needs CUDA)")
    return model


@dataclass(frozen=True)
class _Distributed:
    rank: int = 0
    world: int = 1
    device: str = "cpu"


def _distributed(device: str) -> _Distributed:
    """Joins the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed(device=device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Distributed(dist.get_rank(), dist.get_world_size(), device)


def train(
    dataset: Dataset | StreamingDataset,
    model_name: str,
    model_config: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    out_dir: Path | None = None,
    baseline: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Trains a registered model on `dataset`; writes an artifact and metrics.json to `out_dir`.

    Args:
        dataset: splits and schema.
        model_name: registry name ("hit", "dssm", ...).
        model_config: overrides of the model's config fields; `wide` defaults to the dataset's
            rare id fields (`resolve_model_config`).
        config: optimisation settings.
        out_dir: artifact directory (None: nothing written).
        baseline: a DSSM run's metrics.json, for RelaImpr.
        on_epoch: called with (epoch, validation AUC) after every epoch (`prerank tune`'s pruner);
            an exception it raises ends training.

    Returns:
        TrainResult with the best-validation model and its metrics.
    """
    cfg = config or TrainConfig()
    if not 0.0 < cfg.negative_rate <= 1.0:
        raise ValueError(f"negative_rate must be in (0, 1], got {cfg.negative_rate}")
    if not 0.0 <= cfg.id_dropout < 1.0:
        raise ValueError(f"id_dropout must be in [0, 1), got {cfg.id_dropout}")
    if not 0.0 < cfg.lr_decay <= 1.0 or cfg.embedding_decay < 0:
        raise ValueError("lr_decay must be in (0, 1] and embedding_decay >= 0")
    if cfg.drop_features:
        if not isinstance(dataset, Dataset):
            raise ValueError("drop_features needs the log in memory (not a streamed dataset)")
        dataset = dataset.without(cfg.drop_features)
    version_of_code = code_version()  # at the start: the code that trains, not what is edited meanwhile
    ddp = _distributed(cfg.device)
    torch.manual_seed(cfg.seed)  # every rank builds the same initial model and batch order
    rng = np.random.default_rng(cfg.seed)
    model_cfg = config_from_dict(model_name, resolve_model_config(dataset, model_name, model_config or {}))
    model = build_model(model_name, dataset.schema, model_cfg).to(ddp.device)
    model = cast(PrerankModel, sync_batch_norm(model, ddp.device, ddp.world))
    sparse = SparseEmbeddings(model) if cfg.sparse_embeddings else None
    l2 = cfg.l2 + cfg.embedding_decay * cfg.batch_size / max(len(dataset.train), 1)
    step: nn.Module = _TrainStep(model, l2, ddp.world, sparse.l2 if sparse else None)
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if sparse is not None:  # their gradients are averaged by sparse.all_reduce
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, sparse.ddp_ignored(step))
        step = DistributedDataParallel(step, find_unused_parameters=True)
    optimizer = _optimizer(cfg, model, sparse)
    teacher = _teacher_probabilities(cfg, dataset)
    dropper = torch.Generator(device=ddp.device).manual_seed(cfg.seed + ddp.rank)
    best_auc, best_state, best_epoch, bad = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        quiet = not cfg.progress or ddp.rank != 0
        steps = dataset.train.epoch(rng, cfg.batch_size, ddp.rank, ddp.world, cfg.negative_rate, ddp.device)
        expected = -(-len(dataset.train) // cfg.batch_size)
        if cfg.max_steps_per_epoch:
            expected = min(expected, cfg.max_steps_per_epoch)
        bar = tqdm(steps, total=expected, desc=f"epoch {epoch}", disable=quiet, leave=False, file=sys.stderr)
        total, seen = 0.0, 0
        for n_steps, batch in enumerate(bar, start=1):
            feats = batch.features
            if cfg.id_dropout > 0:
                feats = drop_ids(feats, dataset.schema, cfg.id_dropout, dropper)
            soft = None
            if teacher is not None and batch.rows is not None:
                soft = torch.from_numpy(teacher[batch.rows]).to(ddp.device)
            loss = step(feats, batch.labels, soft, cfg.distill_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sparse is not None and ddp.world > 1:
                sparse.all_reduce(ddp.world)
            optimizer.step()
            total += loss.item() / ddp.world
            seen += batch.size
            if n_steps == cfg.max_steps_per_epoch:
                break
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, dataset.valid, cfg.eval_batch_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(seen, 1),
                "train_seconds": train_seconds,
                "train_rows": seen,
                "rows_per_second": seen / train_seconds if train_seconds else 0.0,
                "valid_auc": val["auc"],
                "valid_logloss": val["logloss"],
            }
        )
        log.info(
            "epoch %d  loss %.4f  valid auc %.4f  logloss %.4f  (%.1fs)",
            epoch,
            total / max(seen, 1),
            val["auc"],
            val["logloss"],
            train_seconds,
        )
        if on_epoch is not None:
            on_epoch(epoch, val["auc"])
        if val["auc"] > best_auc:
            best_auc, best_state, best_epoch, bad = val["auc"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
            if cfg.lr_decay != 1.0:  # go on from the best state, with smaller steps
                model.load_state_dict(best_state)
                _scale_lr(optimizer, cfg.lr_decay)
    model.load_state_dict(best_state)
    model.to("cpu")  # artifacts and test metrics are device-independent
    test_logits = predict_logits(model, dataset.test, cfg.eval_batch_size)  # one pass, shared with _calibrate
    test_probs = torch.sigmoid(torch.from_numpy(test_logits)).numpy()
    test = {"auc": auc(dataset.test.labels, test_probs), "logloss": logloss(dataset.test.labels, test_probs)}
    calibrator, calibration = _calibrate(model, dataset, cfg, test_logits)
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
        "machine": machine(),
        "torch": torch.__version__,
        "world_size": ddp.world,
        **calibration,
    }
    if baseline is not None:
        metrics["baseline"] = {"model": baseline.get("model"), "test_auc": baseline["test_auc"]}
        metrics["rela_impr_pct"] = rela_impr(test["auc"], float(baseline["test_auc"]))
    log.info("test auc %.4f  logloss %.4f  (best epoch %d)", test["auc"], test["logloss"], best_epoch)
    result = TrainResult(model, metrics, history=history)
    if ddp.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if out_dir is not None and ddp.rank == 0:
        meta = {k: v for k, v in metrics.items() if k != "history"}
        version = save_artifact(out_dir, model, dataset.vocabs, meta, calibrator)
        metrics["model_version"] = version
        write_json(out_dir / "metrics.json", metrics)
        result.artifact = out_dir
    return result


def _calibrate(
    model: PrerankModel, dataset: Dataset | StreamingDataset, cfg: TrainConfig, test_logits: np.ndarray
) -> tuple[Calibrator | None, dict[str, Any]]:
    """The calibrator fitted on validation logits, and test metrics before and after it."""
    offset = float(np.log(cfg.negative_rate))
    if cfg.calibration == "none" and offset == 0.0:
        return None, {}
    method = "identity" if cfg.calibration == "none" else cfg.calibration
    valid = predict_logits(model, dataset.valid, cfg.eval_batch_size)
    calibrator = fit_calibrator(valid, dataset.valid.labels, method, offset, cfg.seed)
    raw = torch.sigmoid(torch.from_numpy(test_logits)).numpy()
    calibrated = calibrator.probabilities(test_logits)
    labels = dataset.test.labels
    return calibrator, {
        "calibration": calibrator.method,
        "calibration_fit": calibrator.fit,
        "negative_rate": cfg.negative_rate,
        "test_ece": ece(labels, raw),
        "calibrated_test_logloss": logloss(labels, calibrated),
        "calibrated_test_ece": ece(labels, calibrated),
        "calibrated_test_auc": auc(labels, calibrated),
        "test_base_rate": float(labels.mean()),
        "calibrated_test_mean_pctr": float(calibrated.mean()),
    }


def load_baseline(path: Path) -> dict[str, Any]:
    """Reads a metrics.json (or an artifact directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    data: dict[str, Any] = json.loads(path.read_text())
    if "test_auc" not in data:
        raise ValueError(f"{path} has no test_auc")
    if not float(data["test_auc"]) > 0.5:  # checked before training, not after it
        raise ValueError(f"{path}: baseline test_auc {data['test_auc']} is not above 0.5, so RelaImpr is undefined")
    return data
