"""`prerank ads pause|resume ID...`: stop (or restart) ranking ads on every replica at once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prerank.job import job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def _ad_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ad ids are integers, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"ad ids are non-negative 64-bit integers, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "ads",
        "Pause ads (budget out) or resume them on every replica, whatever version is live. The change is "
        "acknowledged by the store before this returns; replicas apply it within the freshness bound.",
    )
    p.add_argument("action", choices=("pause", "resume", "list"), help="pause or resume the ids, or list paused ids")
    p.add_argument("ad_ids", nargs="*", type=_ad_id, metavar="ID", help="ad ids (pause/resume)")
    p.add_argument("--store", required=True, help="redis://[:password@]host:port/db")
    return p


def _run(args: argparse.Namespace) -> None:
    from prerank.job import UsageError

    if args.action != "list" and not args.ad_ids:
        raise UsageError(f"ads {args.action}: give at least one ad id")
    check_store(args.store)
    from offline.delta import pause_ads, store_client
    from storage import RedisKeys
    from storage.deltas import read_paused

    if args.action == "list":
        seq, ids = read_paused(store_client(args.store), RedisKeys())
        print(f"{len(ids)} paused (change {seq})" + (": " + " ".join(map(str, ids.tolist())) if len(ids) else ""))
        return
    seq = pause_ads(args.store, args.ad_ids, args.action == "pause")
    print(f"{args.action}d {len(args.ad_ids)} ads (change {seq})")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("ads", parser(), _run, argv)
