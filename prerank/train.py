"""`prerank train`: train a model and write an artifact directory."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from models.registry import MODELS, config_from_dict
from offline.train import OPTIMIZERS
from prerank.job import (
    UsageError,
    add_data_args,
    add_threads_arg,
    job_parser,
    json_arg,
    json_object,
    run_job,
    stream_schema,
)

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("train", "Train a model with early stopping on validation AUC; write an artifact directory.")
    add_data_args(p)
    p.add_argument("--model", default="hit", choices=sorted(MODELS), help="registered model (default: hit)")
    p.add_argument(
        "--model-config",
        type=json_object,
        default={},
        help="model overrides as JSON, e.g. '{\"heads\": 4}', or a .json file (prerank tune writes one)",
    )
    p.add_argument(
        "--train-config",
        type=json_object,
        default={},
        help="training settings as JSON or a .json file (prerank tune's train_config.json); flags given explicitly win",
    )
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="adam (default) or plain sgd")
    p.add_argument(
        "--calibration",
        default="auto",
        choices=["auto", "none", "identity", "platt", "isotonic"],
        help="logit -> pCTR calibrator fitted on the validation split (default auto: chosen by "
        "cross-fitted validation LogLoss; none: no calibrator)",
    )
    p.add_argument(
        "--negative-rate",
        type=float,
        default=1.0,
        help="keep each negative training row with this probability (the calibrator corrects the base rate)",
    )
    p.add_argument(
        "--sparse-embeddings",
        action="store_true",
        help="sparse embedding updates (SparseAdam on the tables, L2 on looked-up rows): step time does not grow "
        "with the vocabulary; for id spaces of millions",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="stream the log's shards in bounded memory (a schema file with [splits]); for logs larger than memory",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=1 << 18,
        help="rows shuffled together when streaming (default 262144; 0: the log's order)",
    )
    p.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=0,
        help="end each epoch after this many steps (0: full passes); for logs whose epoch does not fit a sitting",
    )
    p.add_argument("--patience", type=int, default=2, help="epochs without a validation-AUC gain before stopping")
    p.add_argument("--l2", type=float, default=1e-5, help="per-step weight of the embeddings' sum of squares")
    p.add_argument(
        "--embedding-decay",
        type=float,
        default=0.0,
        help="Gaussian prior on embeddings in MAP form (whole-table L2 once per epoch); shrinks rare ids",
    )
    p.add_argument(
        "--id-dropout", type=float, default=0.0, help="replace each training id by OOV with this probability"
    )
    p.add_argument(
        "--distill-from",
        type=Path,
        help="a ranking artifact (e.g. DCN) whose pCTR of each training row is a soft label beside the click",
    )
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the soft labels (default: 1)")
    p.add_argument(
        "--lr-decay", type=float, default=1.0, help="on an epoch without a gain: lr *= this, resume from the best state"
    )
    p.add_argument("--seed", type=int, default=42, help="model init and batch-order seed")
    p.add_argument("--baseline", type=Path, help="a DSSM run's artifact or metrics.json, for RelaImpr")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")
    p.add_argument(
        "--drop-features",
        nargs="+",
        default=[],
        help="leave these schema fields out (ablations; prerank tune may write some in train_config.json)",
    )
    add_threads_arg(p)
    return p


def _train_settings(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, object]:
    """TrainConfig fields from --train-config, overridden by the flags given on the command line."""
    from dataclasses import fields

    from offline.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - {"progress", "device", "seed"}
    unknown = sorted(set(args.train_config) - known)
    if unknown:
        raise UsageError(f"--train-config: unknown keys {unknown}; choose from {sorted(known)}")
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "calibration": args.calibration,
        "negative_rate": args.negative_rate,
        "sparse_embeddings": args.sparse_embeddings,
        "max_steps_per_epoch": args.max_steps_per_epoch,
        "patience": args.patience,
        "l2": args.l2,
        "embedding_decay": args.embedding_decay,
        "id_dropout": args.id_dropout,
        "lr_decay": args.lr_decay,
        "distill_from": str(args.distill_from) if args.distill_from else "",
        "distill_weight": args.distill_weight,
        "drop_features": tuple(args.drop_features),
    }
    given = {a.split("=")[0].removeprefix("--").replace("-", "_") for a in argv if a.startswith("--")}
    return {**flags, **{k: v for k, v in args.train_config.items() if k not in given}}


def _run(args: argparse.Namespace) -> None:
    args.model_config = json_arg(args.model_config, "--model-config")
    args.train_config = json_arg(args.train_config, "--train-config")
    # Cheap checks first: a typo in the config or a missing baseline fails before any data loads.
    config_from_dict(args.model, dict(args.model_config))
    if not 0.0 < args.negative_rate <= 1.0:
        raise UsageError(f"--negative-rate must be in (0, 1], got {args.negative_rate}")
    if args.shuffle_buffer < 0 or args.max_steps_per_epoch < 0:
        raise UsageError("--shuffle-buffer and --max-steps-per-epoch must be >= 0")
    if not 0.0 <= args.id_dropout < 1.0:
        raise UsageError(f"--id-dropout must be in [0, 1), got {args.id_dropout}")
    if not 0.0 < args.lr_decay <= 1.0 or args.embedding_decay < 0 or args.l2 < 0:
        raise UsageError("--lr-decay must be in (0, 1]; --embedding-decay and --l2 must be >= 0")
    if args.distill_from is not None and not (args.distill_from / "meta.json").exists():
        raise UsageError(f"--distill-from {args.distill_from}: not an artifact directory")
    if args.baseline is not None and not args.baseline.exists():
        raise UsageError(f"--baseline {args.baseline}: no such file or directory")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    from offline.data import Dataset, load_dataset
    from offline.data.stream import StreamingDataset, load_streaming
    from offline.train import TrainConfig, load_baseline, train

    baseline = load_baseline(args.baseline) if args.baseline else None
    dataset: Dataset | StreamingDataset
    if args.stream:
        if args.drop_features or args.distill_from is not None:
            raise UsageError(
                "--stream does not go with --drop-features or --distill-from (both need the log in memory)"
            )
        dataset = load_streaming(stream_schema(args.dataset), args.data_dir, args.split_seed, args.shuffle_buffer)
    else:
        dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    try:
        cfg = TrainConfig(
            **_train_settings(args, args.argv),  # type: ignore[arg-type]
            seed=args.seed,
            progress=not args.no_progress,
            device=args.device,
        )
    except TypeError as exc:
        raise UsageError(f"--train-config: {exc}") from None
    result = train(dataset, args.model, args.model_config, cfg, args.out, baseline)
    if result.artifact is None:  # a non-zero torchrun rank: rank 0 reports
        return
    m = result.metrics
    line = f"{args.model} test AUC {m['test_auc']:.4f} LogLoss {m['test_logloss']:.4f}"
    if "calibration" in m:
        line += f" (calibrated, {m['calibration']}: LogLoss {m['calibrated_test_logloss']:.4f}"
        line += f" ECE {m['calibrated_test_ece']:.4f})"
    if "rela_impr_pct" in m:
        line += f" RelaImpr {m['rela_impr_pct']:+.2f}%"
    print(f"{line}  ({m['epochs']} epochs, {m['wall_seconds']:.0f}s) -> {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    code = run_job("train", parser(), _run, argv)  # args.argv: which flags were given
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, skip interpreter teardown once the work is done: gloo's threads can abort
        # a rank while static objects are destroyed, failing a run that succeeded.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":  # torchrun -m prerank.train ...
    raise SystemExit(main())
