"""`prerank export`: run the ad tower over every ad and publish a new index version."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from models.artifact import load_artifact
from models.rows import VECTOR_DTYPES
from prerank.job import add_data_args, add_threads_arg, job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("export", "Encode every ad with an artifact's model and publish a new index version.")
    p.add_argument("artifact", type=Path, help="model artifact directory")
    add_data_args(p)
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db (rediss:// for TLS)")
    p.add_argument("--keep", type=int, default=5, help="published versions to keep (default: 5)")
    p.add_argument("--dtype", default="float32", choices=VECTOR_DTYPES, help="stored vector type (default: float32)")
    add_threads_arg(p)
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store)  # before any data is loaded or any ad encoded
    load_artifact(args.artifact)  # the artifact is complete and its checksum holds
    from offline.data import load_dataset
    from offline.export import export

    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    manifest = export(args.artifact, dataset, args.store, args.dtype, args.keep)
    print(f"published index {manifest['version']} ({manifest['n_ads']} ads, {manifest['dtype']}) to {args.store}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("export", parser(), _run, argv)
