"""`prerank tune`: hyper-parameter search on the validation split (Optuna, resumable SQLite study)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from models.registry import MODELS
from prerank.job import UsageError, add_data_args, add_threads_arg, job_parser, json_arg, json_object, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "tune",
        "Search optimisation and model settings on the validation split with Optuna (TPE sampler, median "
        "pruner); the study is a SQLite file under --out, so the same command resumes it. Writes the best "
        "trial as model_config.json and train_config.json for prerank train, and tune.md with every trial.",
    )
    add_data_args(p)
    p.add_argument("--model", default="hit", choices=sorted(MODELS), help="registered model (default: hit)")
    p.add_argument("--out", type=Path, required=True, help="study folder (study.db, best configs, tune.md)")
    p.add_argument("--trials", type=int, default=20, help="trial budget of the study, resumed runs included")
    p.add_argument("--epochs", type=int, default=30, help="epoch cap per trial (early stopping as in train)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--base",
        type=json_object,
        default={},
        help='fixed settings the search starts from: {"train": {...}, "model_config": {...}} (JSON or .json file)',
    )
    p.add_argument(
        "--warm-start",
        type=Path,
        action="append",
        default=[],
        help="a previous study (its folder or tune.json), of this model or of another on the same data; "
        "repeatable: a new study tries each one's best trial right after the defaults (the settings this "
        "study searches; another model's keep its training settings), once per value of each setting "
        "that study did not search",
    )
    add_threads_arg(p, default=1)
    return p


def _previous_study(path: Path) -> dict[str, Any]:
    """The tune.json at PATH (or in the folder PATH), checked to be one prerank tune wrote."""
    file = path / "tune.json" if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
        best = summary["best"]["params"]
        model = summary["model"]
    except FileNotFoundError:
        raise UsageError(f"--warm-start: {file} does not exist") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--warm-start: {file} is not a tune.json written by prerank tune") from None
    if not isinstance(best, dict) or not isinstance(model, str):
        raise UsageError(f"--warm-start: {file} is not a tune.json written by prerank tune")
    return cast(dict[str, Any], summary)


def _run(args: argparse.Namespace) -> None:
    args.base = json_arg(args.base, "--base")
    if args.trials < 1 or args.epochs < 1:
        raise UsageError("--trials and --epochs must be >= 1")
    unknown = sorted(set(args.base) - {"train", "model_config"})
    if unknown:
        raise UsageError(f"--base: unknown keys {unknown}; use 'train' and 'model_config'")
    from models.registry import config_from_dict
    from offline.data import load_dataset
    from offline.train import TrainConfig
    from offline.tune import run_study

    warm_starts = [_previous_study(path) for path in args.warm_start]
    config_from_dict(args.model, dict(args.base.get("model_config", {})))
    try:
        TrainConfig(**args.base.get("train", {}))
    except TypeError as exc:
        raise UsageError(f"--base train: {exc}") from None
    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    summary = run_study(
        dataset, args.model, args.out, args.trials, args.seed, args.epochs, args.base, args.timeout, warm_starts
    )
    best = summary["best"]
    states = [t["state"] for t in summary["trials"]]
    print(
        f"{args.model} on {dataset.name}: best trial {best['number']} valid AUC {best['valid_auc']:.4f} "
        f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned) -> {args.out / 'model_config.json'}, "
        f"{args.out / 'train_config.json'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("tune", parser(), _run, argv)
