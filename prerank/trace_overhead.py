"""`prerank trace-overhead`: p50 of /prerank with tracing absent, off (default) and on."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prerank.job import add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("trace-overhead", "What tracing costs per request: p50 with it absent, off and on (in process).")
    p.add_argument("--out", type=Path, default=Path("results/ops"), help="where trace_overhead.json/.md go")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds of 50 requests per mode")
    add_threads_arg(p, default=1, what="torch (the server's default: 1)")
    return p


def _run(args: argparse.Namespace) -> None:
    from offline.data import load_dataset
    from offline.export import export
    from offline.train import TrainConfig, train
    from tools.trace_overhead import measure_overhead

    with tempfile.TemporaryDirectory(prefix="prerank-trace-") as tmp:
        data = load_dataset("synthetic:5000")
        train(data, "hit", {}, TrainConfig(epochs=1, progress=False), Path(tmp) / "hit")
        export(Path(tmp) / "hit", data, f"local:{tmp}/store")
        result = measure_overhead(Path(tmp) / "store", args.candidates, args.rounds)
    result["command"] = f"prerank trace-overhead --candidates {args.candidates} --rounds {args.rounds}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trace_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Machine: {result['machine']}; code {result['code_version']}; {result['candidates']} candidates, HIT, "
        "in process (TestClient), torch 1 thread.",
        "",
        "| mode | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {name} | {m['requests']} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} |"
            for name, m in result["modes"].items()
        ),
        "",
        f"Tracing off / no tracing code, p50: {result['off_over_baseline_p50']:.4f}; "
        f"on / no tracing code: {result['on_over_baseline_p50']:.4f}.",
    ]
    (args.out / "trace_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("trace-overhead", parser(), _run, argv)
