"""`prerank report`: rebuild a results table from training runs inside a markdown file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prerank.job import job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("report", "Rebuild a results table (between its markers) from runs' metrics.json files.")
    p.add_argument("kind", choices=["movielens", "seeds"], help="movielens: one row per run; seeds: mean/std per model")
    p.add_argument("runs", type=Path, help="directory of run directories")
    p.add_argument("out", type=Path, help="markdown file to update")
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.report import write_report

    write_report(args.kind, args.runs, args.out)
    print(f"updated {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("report", parser(), _run, argv)
