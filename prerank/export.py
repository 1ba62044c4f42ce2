"""`prerank export`: run the ad tower over every ad and publish a new index version."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from models.artifact import load_artifact
from models.rows import VECTOR_DTYPES
from prerank.job import UsageError, add_data_args, add_threads_arg, job_parser, run_job, stream_schema
from storage import check_store, parse_store_url

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("export", "Encode every ad with an artifact's model and publish a new index version.")
    p.add_argument("artifact", type=Path, help="model artifact directory")
    add_data_args(p)
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db (rediss:// for TLS)")
    p.add_argument("--keep", type=int, default=5, help="published versions to keep (default: 5)")
    p.add_argument(
        "--blobs",
        default=os.environ.get("PRERANK_BLOB_URL") or None,
        help="redis:// stores: put the version files in this file or object store (a directory or any fsspec "
        "URL: file://, s3://, gs://); Redis keeps the manifest, checksums, pointer and events "
        "(default: $PRERANK_BLOB_URL, else the files go into Redis)",
    )
    p.add_argument(
        "--user-store",
        default=os.environ.get("PRERANK_USER_STORE") or "auto",
        choices=("auto", "replicated", "per-request"),
        help="where the user feature table goes: replicated (a file every replica loads into memory), "
        "per-request (packed rows in Redis, one read per request; redis:// stores), or auto (per-request above "
        "1,000,000 users) (default: $PRERANK_USER_STORE, else auto)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="read the user and ad snapshot from the log's shards (a schema file with [splits]) without loading "
        "the log, encoded with the artifact's vocabularies",
    )
    p.add_argument("--dtype", default="float32", choices=VECTOR_DTYPES, help="stored vector type (default: float32)")
    p.add_argument(
        "--delta",
        action="store_true",
        help="publish only what changed since the live version (new or changed ads encoded by the live model, "
        "removals, bid changes) as a delta on top of it; needs a redis:// store and the live version's artifact",
    )
    add_threads_arg(p)
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store)  # before any data is loaded or any ad encoded
    if args.blobs and parse_store_url(args.store).scheme != "redis":
        raise UsageError("--blobs goes with a redis:// store (a local: store already holds files)")
    if args.user_store == "per-request" and parse_store_url(args.store).scheme != "redis":
        raise UsageError("--user-store per-request goes with a redis:// store (a local: store replicates users)")
    bundle = load_artifact(args.artifact)  # the artifact is complete and its checksum holds
    if args.delta:
        from offline.delta import check_live_model

        check_live_model(args.store, bundle.version)  # before any data is loaded
    from offline.data import Dataset, load_dataset
    from offline.data.stream import Snapshot, load_snapshot
    from offline.export import export

    dataset: Dataset | Snapshot
    if args.stream:
        if args.delta:
            raise UsageError("--stream publishes whole versions; --delta reads the log in memory")
        dataset = load_snapshot(stream_schema(args.dataset), args.data_dir, bundle.schema, bundle.vocabs)
    else:
        dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    if args.delta:
        assert isinstance(dataset, Dataset)
        from offline.delta import export_delta

        done = export_delta(args.artifact, dataset, args.store)
        counts = f"{done['upserts']} upserts, {done['removals']} removals, {done['bid_changes']} bid changes"
        if done["seq"] is None:
            print(f"nothing changed since {done['version']}: no delta published")
        else:
            print(f"published delta {done['seq']} on {done['version']} ({counts}) to {args.store}")
        return
    manifest = export(args.artifact, dataset, args.store, args.dtype, args.keep, args.blobs, args.user_store)
    where = f" (files in {manifest['blobs']})" if manifest.get("blobs") else ""
    users = manifest.get("user_store", {})
    if users.get("mode") == "per-request":
        where += f"; {users['n_users']:,} users per request, {users['bytes_per_user']} bytes each in Redis"
    print(
        f"published index {manifest['version']} ({manifest['n_ads']} ads, {manifest['dtype']}) to {args.store}{where}; "
        f"{manifest.get('redis_bytes', 0):,} bytes in Redis"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("export", parser(), _run, argv)
