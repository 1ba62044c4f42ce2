"""`prerank stream-bench`: peak RSS and rows/s of `prerank train` against log size, streamed and in memory."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "stream-bench",
        "Train on each scale world (prerank generate-scale) with a fixed step budget, streamed and (up to a size) "
        "in memory, in fresh processes; report peak RSS, rows/s per core and wall time, with a plot.",
    )
    p.add_argument("worlds", nargs="+", type=Path, help="schema.toml files of scale worlds, smallest first")
    p.add_argument("--out", type=Path, required=True, help="results folder (report.json, report.md, memory.png)")
    p.add_argument("--work", type=Path, default=Path("runs/stream-bench"), help="where the runs' artifacts go")
    p.add_argument("--steps", type=int, default=1000, help="steps per run (batch 2048; default 1000)")
    p.add_argument(
        "--in-memory-up-to",
        type=int,
        default=10_000_000,
        help="also train in memory on worlds of at most this many rows",
    )
    p.add_argument("--full-epoch", type=Path, help="one world to also stream a full epoch of")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--model", default="hit")
    return p


def _run(args: argparse.Namespace) -> None:
    from tools.stream_bench import run_one, summarise

    for schema in [*args.worlds, *([args.full_epoch] if args.full_epoch else [])]:
        if not (schema.is_file() and (schema.parent / "reference.json").is_file()):
            raise UsageError(f"{schema}: not the schema.toml of a scale world (prerank generate-scale writes one)")
    if args.steps < 1 or args.threads < 1:
        raise UsageError("--steps and --threads must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    work = args.work
    for schema in args.worlds:
        rows = sum(json.loads((schema.parent / "reference.json").read_text())["rows"].values())
        modes = [True, False] if rows <= args.in_memory_up_to else [True]
        for stream in modes:
            name = f"{rows}-{'stream' if stream else 'memory'}"
            runs.append(run_one(schema, work / name, stream, args.steps, args.threads, args.model))
            print(json.dumps({k: runs[-1][k] for k in ("world_rows", "mode", "peak_rss_bytes", "rows_per_second")}))
            summarise(runs, args.out, "prerank stream-bench " + shlex.join(args.argv))
    if args.full_epoch:
        runs.append(run_one(args.full_epoch, work / "full-epoch", True, 0, args.threads, args.model))
    report = summarise(runs, args.out, "prerank stream-bench " + shlex.join(args.argv))
    print((args.out / "report.md").read_text(), end="")
    if "stream_peak_ratio_largest_to_smallest" in report:
        print(f"streamed peak RSS, largest / smallest log: {report['stream_peak_ratio_largest_to_smallest']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("stream-bench", parser(), _run, argv)
