"""`prerank worlds`: every model on generated worlds, against their attainable and Bayes AUC."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from models.registry import MODELS, config_from_dict
from prerank.generate import STRUCTURES
from prerank.job import UsageError, job_parser, json_arg, json_object, run_job

__all__ = ["main", "parser"]

DEFAULT_MODELS = ("hit", "dssm", "inttower", "fit", "cold", "dcn")  # offline.world_table.DEFAULT_MODELS


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "worlds",
        "Generate each world once, train every (world, model, seed) with the prerank train defaults (or "
        "prerank tune's configs), two runs at a time with one thread each, and write OUT/worlds.md, "
        "worlds.json and worlds.png. Finished runs under --runs are reused.",
    )
    p.add_argument("--out", type=Path, default=Path("results/worlds"), help="report folder")
    p.add_argument("--runs", type=Path, default=Path("runs/worlds"), help="worlds and per-run metrics")
    p.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--ads", type=int, default=4_000)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument(
        "--tuned", type=Path, help="folder of prerank tune outputs, one <structure>-<model>/ per tuned model"
    )
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="MODEL=JSON",
        help='model config overrides for one model in every world, e.g. hit=\'{"linear": true, "wide": "rare-ids"}\' '
        "(repeatable; a tuned model config applies over it)",
    )
    p.add_argument(
        "--history-pooling",
        default="recency",  # offline.worlds.HISTORY_POOLING (not imported: the CLI starts light)
        choices=("mean", "sum", "recency"),
        help="how the generated schema files pool the behaviour history "
        "(default: recency, a learned weight per position)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the runs")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    model_configs = {}
    for item in args.model_config:
        name, sep, text = item.partition("=")
        if not sep or name not in args.models:
            raise UsageError(f"--model-config takes MODEL=JSON with MODEL one of {args.models}, got {item!r}")
        try:
            value = json_object(text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--model-config {name}: {exc}") from None
        model_configs[name] = json_arg(value, f"--model-config {name}")
        config_from_dict(name, dict(model_configs[name]))  # a typo fails before any training
    from offline.world_table import run_worlds, worlds_report

    if not args.report_only:
        size = {"users": args.users, "ads": args.ads, "rows": args.rows}
        run_worlds(
            args.runs,
            args.structures,
            args.models,
            args.seeds,
            size,
            args.jobs,
            args.tuned,
            model_configs,
            args.history_pooling,
        )
    print(f"wrote {worlds_report(args.runs, args.out)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("worlds", parser(), _run, argv)
