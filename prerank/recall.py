"""`prerank retrieval-recall`: recall@K of FAISS retrieval against exact scoring, on a published version."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from prerank.job import add_threads_arg, job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("retrieval-recall", "Mean recall@K of /retrieve's FAISS search against exact scoring.")
    p.add_argument("--store", required=True, help="local:DIR or redis://...")
    p.add_argument("--k", type=int, nargs="+", default=[100, 500])
    p.add_argument("--users", type=int, default=300, help="stored users sampled (seed 0)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    add_threads_arg(p, default=1, what="torch (the server's default: 1)")
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store, must_exist=True)
    from tools.recall import markdown, measure_recall

    result = measure_recall(args.store, args.k, args.users)
    print(markdown(result), end="")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("retrieval-recall", parser(), _run, argv)
