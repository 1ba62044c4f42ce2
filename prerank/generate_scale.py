"""`prerank generate-scale`: write a known-answer impression log at production size as Parquet shards."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, job_parser, run_job

__all__ = ["main", "parser"]


def _count(text: str) -> int:
    """argparse type: 10000000, 10_000_000, 10M or 1.5k."""
    scale = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
    raw = text.strip().lower().replace("_", "")
    try:
        value = float(raw[:-1]) * scale[raw[-1]] if raw and raw[-1] in scale else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (write 10000000 or 10M)") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive whole count: {text!r}")
    return int(value)


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "generate-scale",
        "Write a scale world: Parquet shards of an impression log (train/valid/test, time-ordered) whose clicks "
        "come from a known function, a schema file for `prerank train --stream`, and reference.json with the "
        "test rows' Bayes AUC/LogLoss. Bounded memory at any size.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--ads", type=_count, default=10_000_000, help="ads (default 10M)")
    p.add_argument("--users", type=_count, default=50_000_000, help="users (default 50M)")
    p.add_argument("--rows", type=_count, default=100_000_000, help="impression rows (default 100M)")
    p.add_argument("--rows-per-shard", type=_count, default=4_000_000, help="rows per Parquet file (default 4M)")
    p.add_argument("--zipf", type=float, default=0.5, help="long-tail exponent of user and ad activity, in [0, 1)")
    p.add_argument(
        "--hash-buckets", type=_count, default=0, help="embedding buckets of the hashed ids (0: by id count, <= 2^22)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.scale_world import ScaleWorldConfig, generate_scale_world

    try:
        config = ScaleWorldConfig(
            ads=args.ads,
            users=args.users,
            rows=args.rows,
            seed=args.seed,
            zipf=args.zipf,
            rows_per_shard=args.rows_per_shard,
            hash_buckets=args.hash_buckets,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ref = generate_scale_world(config, args.out)
    rows = ref["rows"]
    print(
        f"scale world: {rows['train']}/{rows['valid']}/{rows['test']} rows in {sum(ref['shards'].values())} shards "
        f"({ref['bytes'] / 2**30:.2f} GiB, {ref['generate_seconds']:.0f}s), test Bayes AUC {ref['bayes']['auc']:.4f} "
        f"-> {args.out / ref['schema_file']}"
    )
    print(json.dumps({"bayes": ref["bayes"], "positive_rate": ref["positive_rate"]}))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("generate-scale", parser(), _run, argv)
