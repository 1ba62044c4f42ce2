"""`prerank evaluate`: AUC, calibrated LogLoss, ECE, GAUC, revenue@k and ranking consistency of
trained artifacts on one dataset, with a reliability plot (offline.evaluate)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, add_data_args, add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]


def _named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"an artifact is NAME=DIR (e.g. hit=runs/hit), got {text!r}")
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    p = job_parser("evaluate", "Business metrics of trained artifacts on one dataset, with a reliability plot.")
    p.add_argument("artifacts", nargs="+", type=_named, metavar="NAME=DIR", help="artifacts to compare")
    add_data_args(p)
    p.add_argument("--reference", help="NAME of the ranking-stage model for ranking consistency (e.g. dcn)")
    p.add_argument("--users", type=int, default=300, help="test users with a simulated candidate set (default: 300)")
    p.add_argument("--candidates", type=int, default=1000, help="candidates per user (default: 1000)")
    p.add_argument("--k", type=int, default=10, help="revenue@k and the reference's top k (default: 10)")
    p.add_argument("--big-k", type=int, default=100, help="the pre-ranker's top K for consistency (default: 100)")
    p.add_argument("--out", type=Path, default=Path("results/evaluate"))
    add_threads_arg(p)
    return p


def _run(args: argparse.Namespace) -> None:
    artifacts = dict(args.artifacts)
    if len(artifacts) != len(args.artifacts):
        raise UsageError("artifact names must be unique")
    if args.reference is not None and args.reference not in artifacts:
        raise UsageError(f"--reference {args.reference!r} is not one of {sorted(artifacts)}")
    if args.big_k < args.k:
        raise UsageError(f"--big-k ({args.big_k}) must be >= --k ({args.k})")
    from models.artifact import load_artifact

    for path in artifacts.values():
        load_artifact(path)  # complete and checksummed, before the data loads
    from models.provenance import code_version, machine
    from offline.data import load_dataset
    from offline.evaluate import evaluate_artifacts, plot_reliability

    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    result = evaluate_artifacts(
        artifacts, dataset, args.reference, args.users, args.candidates, args.k, args.big_k, args.split_seed
    )
    result.update(
        command="prerank evaluate " + " ".join(args.argv),
        machine=machine(),
        code_version=code_version(),
        dataset=dataset.describe(),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    lines = [
        f"# Business metrics on {dataset.name} ({result['machine']})",
        "",
        f"`{result['command']}`, data sha256 {dataset.checksum[:12]}, code {result['code_version']}.",
    ]
    if "bayes_auc" in result:
        lines.append(f"Bayes AUC of the test rows: {result['bayes_auc']:.4f}.")
    lines.append(
        f"revenue@{args.k}: bid x click of the top {args.k} by eCPM over the oracle order's, on "
        f"{result['n_users']} test users x {result['n_candidates']} candidates (clicks: {result['clicks']}; bids: "
        f"{result['bids']}); consistency: share of {args.reference}'s top {args.k} in the model's top {args.big_k}."
    )
    header = f"| model | AUC | LogLoss (calibrated) | ECE | GAUC | revenue@{args.k} | consistency |"
    lines += ["", header, "|---" * (header.count("|") - 1) + "|"]
    for name, r in result["rows"].items():
        cons = r.get("consistency")
        lines.append(
            f"| {name} | {r['auc']:.4f} | {r['logloss']:.4f} | {r['ece']:.4f} | {r['gauc']:.4f} | "
            f"{r['revenue_at_k']:.4f} | {'-' if cons is None else f'{cons:.3f}'} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "evaluate.md").write_text("\n".join(lines) + "\n")
    plot_reliability([args.out / "evaluate.json"], args.out / "reliability.png", f"{dataset.name} test rows")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("evaluate", parser(), _run, argv)
