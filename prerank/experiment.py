"""`prerank experiment`: start or end an A/B experiment or a shadow candidate on every replica."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from prerank.job import UsageError, job_parser, run_job
from storage import check_store

__all__ = ["main", "parser"]


def _arm(text: str) -> dict[str, object]:
    """NAME=VERSION:SHARE, e.g. control=live:0.5 or treatment=v261201161000123:0.5."""
    try:
        name, rest = text.split("=", 1)
        version, share = rest.rsplit(":", 1)
        return {"name": name, "version": version, "share": float(share)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an arm is NAME=VERSION:SHARE (e.g. control=live:0.5), got {text!r}"
        ) from None


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "experiment",
        "A/B experiments (users split by a salted hash of their id, sticky) and shadow scoring, for every replica "
        "following the store.",
    )
    p.add_argument(
        "action", choices=("start", "end", "shadow", "shadow-end", "show"), help="what to do (show: the configs)"
    )
    p.add_argument("name", nargs="?", help="start: the experiment's name; shadow: the candidate version")
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db")
    p.add_argument("--salt", help="start: the salt of the user hash (a new salt reshuffles users)")
    p.add_argument("--arm", type=_arm, action="append", default=[], help="start: NAME=VERSION:SHARE (2 to 8 arms)")
    p.add_argument("--sample", type=float, default=0.1, help="shadow: fraction of requests offered (default: 0.1)")
    return p


def _run(args: argparse.Namespace) -> None:
    check_store(args.store, must_exist=True)
    from service.store import open_store
    from storage.experiments import Experiment, ShadowConfig

    store = open_store(args.store)
    if args.action == "show":
        experiment, shadow = store.experiments()
        print(
            json.dumps({"experiment": experiment and experiment.model_dump(), "shadow": shadow and shadow.model_dump()})
        )
        return
    if args.action in ("end", "shadow-end"):
        kind = "experiment" if args.action == "end" else "shadow"
        print(f"{kind} ended" if store.clear_config(kind) else f"no {kind} was running")
        return
    if not args.name:
        raise UsageError(
            f"experiment {args.action}: give the {'name' if args.action == 'start' else 'candidate version'}"
        )
    if args.action == "start":
        if not args.salt:
            raise UsageError("experiment start: --salt is required")
        experiment = Experiment.model_validate({"name": args.name, "salt": args.salt, "arms": args.arm})
        versions = {a.version for a in experiment.arms}
        config: Experiment | ShadowConfig = experiment
    else:
        config = ShadowConfig.model_validate({"version": args.name, "sample": args.sample})
        versions = {config.version}
    for version in sorted(versions - {"live"}):
        store.version_bytes(version)  # ArtifactError (one line) for a version the store lacks
    store.set_config(config)
    print(f"{args.action} {args.name}: {config.model_dump_json()}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("experiment", parser(), _run, argv)
