"""`prerank user-store-bench`: Redis and replica memory of the user store against the user count."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from prerank.job import UsageError, add_data_args, add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "user-store-bench",
        "Redis bytes, replica RSS and lookup latency of the user store, replicated against per-request, "
        "at several user counts (a private redis-server).",
    )
    p.add_argument("artifact", type=Path, help="model artifact directory")
    add_data_args(p)
    p.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000], help="user counts")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["replicated", "per-request"],
        choices=("replicated", "per-request"),
        help="user store modes measured at each count",
    )
    p.add_argument("--lookups", type=int, default=5000, help="timed per-request lookups per point")
    p.add_argument("--out", type=Path, default=Path("results/scale/users"))
    add_threads_arg(p, default=1)
    return p


def _plot(rows: list[dict], path: Path) -> None:  # type: ignore[type-arg]
    from tools.plotting import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, marker in (("replicated", "o"), ("per-request", "s")):
        pts = [r for r in rows if r["mode"] == mode]
        users = [r["users"] for r in pts]
        left.plot(users, [r["user_bytes"] / 2**20 for r in pts], marker=marker, label=mode)
        right.plot(users, [r["replica_rss_growth"] / 2**20 for r in pts], marker=marker, label=mode)
    for ax, title in ((left, "Redis MiB holding the user table"), (right, "replica RSS growth loading a version, MiB")):
        ax.set_xscale("log")
        ax.set_yscale("symlog")
        ax.set_xlabel("users")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _run(args: argparse.Namespace) -> None:
    import shutil

    import torch

    if shutil.which("redis-server") is None:
        raise UsageError("user-store-bench starts its own redis-server; none is on PATH")
    from models.provenance import code_version, machine
    from offline.data import load_dataset
    from tools.user_store_bench import measure, private_redis

    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    rows = []
    with private_redis() as url:
        for n in args.users:
            for mode in args.modes:
                rows.append(measure(args.artifact, dataset, n, mode, url, args.lookups))
                print(json.dumps(rows[-1]))
    report = {
        "command": "prerank user-store-bench " + " ".join(args.argv),
        "machine": machine(),
        "code_version": code_version(),
        "torch_threads": torch.get_num_threads(),
        "dataset": dataset.name,
        "data_sha256": dataset.checksum,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    lines = [
        f"# User store: replicated against per-request ({report['machine']})",
        "",
        f"`{report['command']}`; dataset {dataset.name} (sha256 {dataset.checksum[:12]}), its user table resampled "
        f"to each count with fresh ids; code {report['code_version']}. A private redis-server (no persistence), "
        "flushed between points. **user bytes**: the user table in Redis (per-request: MEMORY USAGE of every bucket "
        "hash; replicated: the two user files in chunks). **replica RSS growth**: a fresh process loading the "
        "version as `prerank serve` does. **lookup**: one per-request read, LRU off, pipelined with the online "
        "row's GET, on random users.",
        "",
        "| users | mode | user bytes in Redis | per user | Redis growth (whole version) | publish s "
        "| replica RSS growth | replica peak RSS | lookup p50 / p99 µs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lookup = f"{r['lookup_us_p50']} / {r['lookup_us_p99']}" if "lookup_us_p50" in r else "-"
        lines.append(
            f"| {r['users']:,} | {r['mode']} | {r['user_bytes'] / 2**20:,.1f} MiB | {r['user_bytes_per_user']} B "
            f"| {r['redis_bytes'] / 2**20:,.1f} MiB | {r['publish_s']} | {r['replica_rss_growth'] / 2**20:,.1f} MiB "
            f"| {r['replica_peak_rss'] / 2**20:,.0f} MiB | {lookup} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(rows, args.out / "memory.png")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("user-store-bench", parser(), _run, argv)
