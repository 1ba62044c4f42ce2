"""`prerank sparse-bench`: training step time against vocabulary size, dense vs sparse embeddings."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from prerank.job import add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("sparse-bench", "Training step time of HIT with one id table of each size, dense vs sparse updates.")
    p.add_argument("--vocab", type=int, nargs="+", default=[20_000, 1_000_000, 10_000_000], help="ad_id table sizes")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (after 3 warm-up steps)")
    p.add_argument("--out", type=Path, default=Path("results/scale/sparse_step"))
    add_threads_arg(p, default=2)
    return p


def _run(args: argparse.Namespace) -> None:
    import torch

    from models.provenance import code_version, machine
    from tools.sparse_bench import step_times

    rows = [step_times(v, sparse, args.batch_size, args.steps) for v in args.vocab for sparse in (False, True)]
    report = {
        "command": "prerank sparse-bench " + " ".join(args.argv),
        "machine": machine(),
        "code_version": code_version(),
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    lines = [
        f"# Training step time against vocabulary size ({report['machine']})",
        "",
        f"`{report['command']}`, {report['torch_threads']} torch threads, HIT, batch {args.batch_size}, "
        f"median of {args.steps} steps after 3 warm-up steps; code {report['code_version']}.",
        "",
        "| ad_id rows | dense Adam + table L2: step p50 / p90 ms | sparse (SparseAdam, row L2): step p50 / p90 ms "
        "| speed-up |",
        "|---|---|---|---|",
    ]
    for v in args.vocab:
        d = next(r for r in rows if r["vocab"] == v and r["mode"] == "dense")
        s = next(r for r in rows if r["vocab"] == v and r["mode"] == "sparse")
        lines.append(
            f"| {v:,} | {d['step_ms_p50']} / {d['step_ms_p90']} | {s['step_ms_p50']} / {s['step_ms_p90']} | "
            f"{d['step_ms_p50'] / s['step_ms_p50']:.1f}x |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("sparse-bench", parser(), _run, argv)
