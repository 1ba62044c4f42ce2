"""`prerank rollback`: point the store's live version at an earlier published version."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prerank.job import job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("rollback", "Point the store's live version at an earlier published version.")
    p.add_argument("version", help="e.g. v000003 (see prerank versions)")
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db")
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store, must_exist=True)
    from offline.publish import open_publisher

    open_publisher(args.store).rollback(args.version)
    print(f"live version is now {args.version}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("rollback", parser(), _run, argv)
