"""`prerank generate`: write an impression log whose click probability is known (a world)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]

STRUCTURES = ("maxsim", "cross", "sequence")  # offline.worlds.STRUCTURES (a test keeps them equal)


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "generate",
        "Write a world: an impression log (Parquet or CSV) whose clicks come from a known function, its "
        "schema file, and reference.json with the test rows' Bayes and attainable AUC/LogLoss.",
    )
    p.add_argument("--structure", default="maxsim", choices=STRUCTURES, help="click model (default: maxsim)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--ads", type=int, default=4_000)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--zipf", type=float, default=1.0, help="long-tail exponent of user and ad activity (0: uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=1023, help="the train/valid split the reference is fitted on")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument(
        "--history-pooling",
        default="recency",  # offline.worlds.HISTORY_POOLING (not imported: the CLI starts light)
        choices=("mean", "sum", "recency"),
        help="how the schema file pools the behaviour history (default: recency, a learned weight per position)",
    )
    add_threads_arg(p, default=1)
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.worlds import WorldConfig, generate_world

    try:
        config = WorldConfig(args.structure, args.users, args.ads, args.rows, args.seed, args.zipf, args.split_seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ref = generate_world(config, args.out, args.format, args.history_pooling)
    print(
        f"{args.structure}: {ref['rows']['train']}/{ref['rows']['valid']}/{ref['rows']['test']} rows, "
        f"test Bayes AUC {ref['bayes']['auc']:.4f}, attainable {ref['attainable']['auc']:.4f} -> "
        f"{args.out / ref['schema_file']}"
    )
    print(json.dumps({"bayes": ref["bayes"], "attainable": ref["attainable"]}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("generate", parser(), _run, argv)
