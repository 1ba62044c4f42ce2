"""Peak memory and throughput of `prerank train` against log size, streamed and in memory.

Each run is a fresh interpreter running `prerank train` on one world's schema file, which
reports its own peak RSS (VmHWM) when the job ends: the streamed runs read the shards through
`--stream`, the in-memory runs load the whole log with the schema-file loader first. Every run
takes the same fixed step budget (`--max-steps-per-epoch`), so what differs is the log's size; a
full epoch is reported where one was run. The summary (`report.json`, `report.md`, `memory.png`)
gives peak RSS, rows/s per core, load time and wall time per run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.provenance import code_version, machine

__all__ = ["run_one", "summarise"]

#: Runs the job in a fresh interpreter and appends its peak RSS (VmHWM) to a file.
_CHILD = """
import json, sys
from prerank.cli import main
code = main(sys.argv[2:])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as f:
    json.dump({"exit_code": code, "peak_rss_bytes": peak}, f)
sys.exit(code)
"""


def run_one(
    schema: Path,
    out: Path,
    stream: bool,
    steps: int,
    threads: int,
    model: str = "hit",
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Trains once; returns the run's peak RSS, wall time and the metrics it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / "peak.json"
    argv = ["train", "--dataset", str(schema), "--model", model, "--sparse-embeddings", "--epochs", "1"]
    argv += ["--calibration", "platt", "--no-progress", "--threads", str(threads), "--out", str(out / "artifact")]
    if steps:
        argv += ["--max-steps-per-epoch", str(steps)]
    if stream:
        argv.append("--stream")
    argv += extra or []
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _CHILD, str(probe), *argv], check=True)
    wall = time.perf_counter() - started
    peak = json.loads(probe.read_text())
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    reference = json.loads((schema.parent / "reference.json").read_text())
    epoch = metrics["history"][0]
    return {
        "world_rows": sum(reference["rows"].values()),
        "train_rows": metrics["rows"]["train"],
        "mode": "stream" if stream else "in-memory",
        "steps": steps or None,
        "rows_trained": epoch["train_rows"],
        "full_epoch": epoch["train_rows"] >= metrics["rows"]["train"],
        "peak_rss_bytes": peak["peak_rss_bytes"],
        "wall_seconds": wall,
        "train_seconds": epoch["train_seconds"],
        "rows_per_second": epoch["rows_per_second"],
        "rows_per_second_per_core": epoch["rows_per_second"] / threads,
        "setup_seconds": wall - metrics["wall_seconds"],
        "test_auc": metrics["test_auc"],
        "calibrated_test_logloss": metrics.get("calibrated_test_logloss"),
        "bayes_auc": reference["bayes"]["auc"],
        "threads": threads,
        "command": "prerank " + " ".join(argv),
        "data_sha256": reference["data_sha256"],
    }


def summarise(runs: list[dict[str, Any]], out: Path, command: str) -> dict[str, Any]:
    """Writes report.json, report.md and memory.png for the runs."""
    report = {"runs": runs, "command": command, "code_version": code_version(), "machine": machine()}
    streamed = [r for r in runs if r["mode"] == "stream" and not r["full_epoch"]]
    if len(streamed) >= 2:
        small, big = min(streamed, key=lambda r: r["world_rows"]), max(streamed, key=lambda r: r["world_rows"])
        report["stream_peak_ratio_largest_to_smallest"] = big["peak_rss_bytes"] / small["peak_rss_bytes"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| log rows | mode | rows trained | peak RSS (GiB) | rows/s per core | setup s | train s | wall s | test AUC "
        "| Bayes AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        trained = f"{r['rows_trained']:,}" + (" (full epoch)" if r["full_epoch"] else f" ({r['steps']} steps)")
        lines.append(
            f"| {r['world_rows']:,} | {r['mode']} | {trained} | {r['peak_rss_bytes'] / 2**30:.2f} "
            f"| {r['rows_per_second_per_core']:,.0f} | {r['setup_seconds']:.0f} | {r['train_seconds']:.0f} "
            f"| {r['wall_seconds']:.0f} | {r['test_auc']:.4f} | {r['bayes_auc']:.4f} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(runs, out / "memory.png")
    return report


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    from tools.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("stream", "o"), ("in-memory", "s")):
        points = sorted((r["world_rows"], r["peak_rss_bytes"] / 2**30) for r in runs if r["mode"] == mode)
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=f"prerank train ({mode})")
    ax.set_xscale("log")
    ax.set_xlabel("log rows")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
