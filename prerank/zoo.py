"""`prerank zoo`: train every model on MovieLens-1M (both protocols, several seeds) and report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from models.registry import MODELS
from prerank.job import PROTOCOLS, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    from offline.zoo import VARIANTS

    p = job_parser("zoo", "Train every model on MovieLens-1M (both protocols, several seeds); write zoo.md/json/png.")
    p.add_argument("--data-dir", type=Path, help="MovieLens folder (default: $PRERANK_DATA_DIR/movielens-1m)")
    p.add_argument("--dataset", default="movielens-1m", help=argparse.SUPPRESS)  # tests: synthetic
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), help="default: every registered model")
    p.add_argument("--protocols", nargs="+", default=["paper", "clean"], choices=PROTOCOLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="maximum epochs per run (early stopping, patience 2; runs that hit a smaller cap are retrained)",
    )
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel, one torch thread each")
    p.add_argument("--runs", type=Path, default=Path("runs/zoo"), help="run directories (existing runs are reused)")
    p.add_argument("--out", type=Path, default=Path("results/zoo"), help="where zoo.md/json/png go")
    p.add_argument(
        "--evaluate-seeds",
        nargs="*",
        type=int,
        default=[1],
        help="seeds whose artifacts get the business metrics and the variants (default: 1)",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        choices=sorted(VARIANTS),
        default=sorted(VARIANTS),
        help="models trained another way on the evaluated seeds (default: all; none: --variants)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from existing runs")
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.zoo import run_zoo, zoo_report

    if not args.report_only:
        models = args.models or list(MODELS)
        run_zoo(
            args.data_dir,
            args.runs,
            models,
            args.protocols,
            args.seeds,
            args.epochs,
            args.jobs,
            args.dataset,
            args.out,
            args.evaluate_seeds,
            args.variants,
        )
    print(f"wrote {zoo_report(args.runs, args.out)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("zoo", parser(), _run, argv)
