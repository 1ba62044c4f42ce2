"""`prerank versions`: list the published versions of a store (* marks the live one)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prerank.job import job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("versions", "List the published versions of a store; * marks the live one.")
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db")
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store, must_exist=True)
    from offline.publish import open_publisher

    publisher = open_publisher(args.store)
    live = publisher.current()
    for m in publisher.versions():
        mark = "*" if m.get("version") == live else " "
        fields = (m.get("version"), m.get("model_version"), f"{m.get('n_ads')} ads", m.get("dtype"), m.get("created"))
        print(mark, "  ".join(str(f) for f in fields))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("versions", parser(), _run, argv)
