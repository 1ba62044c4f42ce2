"""`prerank download-movielens`: fetch the official MovieLens-1M archive (needs a network)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prerank.job import job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("download-movielens", "Download ml-1m.zip, check its md5 and extract it.")
    p.add_argument("--data-dir", type=Path, required=True, help="where users.dat, movies.dat, ratings.dat go")
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.data.download import download_movielens

    print(f"MovieLens-1M ready in {download_movielens(args.data_dir)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("download-movielens", parser(), _run, argv)
