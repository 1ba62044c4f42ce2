"""`prerank bench`: time the service's scoring path per model, stored dtype and candidate count."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, add_threads_arg, job_parser, run_job
from tools.bench import CANDIDATES, CONFIGS, DTYPES, markdown, plot, run_bench

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("bench", "Scoring-path benchmark beside the machine's copy bandwidth (bench.json/md/png).")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="where bench.json, .md, .png go")
    p.add_argument("--ads", type=int, default=100_000, help="corpus size held in memory")
    p.add_argument("--repeats", type=int, default=200, help="timed calls per cell (fewer for slow models)")
    p.add_argument("--models", nargs="+", choices=sorted({c.model for c in CONFIGS}), help="default: every one")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--candidates", nargs="+", type=int, default=list(CANDIDATES))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_threads_arg(p, default=1, what="torch (the server's default: 1)")
    return p


def _run(args: argparse.Namespace) -> None:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    configs = tuple(c for c in CONFIGS if not args.models or c.model in args.models)
    result = run_bench(args.ads, args.repeats, configs, tuple(args.candidates), tuple(args.dtypes), args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(result))
    plot(result, args.out / "bench.png")
    print(markdown(result))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("bench", parser(), _run, argv)
