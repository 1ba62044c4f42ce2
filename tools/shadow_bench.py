"""What shadow scoring costs live traffic: open-loop p99 with and without a slow shadow candidate.

Publishes the live artifact and a candidate artifact (a slower model) to a local store, starts
`prerank serve` pinned to CPU 0 with one torch thread, and alternates phases of the same k6
open-loop load (fixed arrival rate): without a shadow, then with the candidate shadowing every
request (`sample` 1.0 by default). It reports p50/p99/p99.9, dropped arrivals and failures per
phase, and how much slower the candidate was per request (its mean scoring time from
`prerank_shadow_scoring_duration_seconds` over the live mean from `prerank_scoring_duration_seconds`),
plus how many shadow requests were scored and dropped. Writes report.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.run import _pin
from tools.freshness import Client, _k6_all, process
from tools.procs import free_port

__all__ = ["main", "parser"]


def _scrape(url: str) -> dict[str, float]:
    """Sums of the series this report needs, from /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    wanted = (
        "prerank_scoring_duration_seconds_sum",
        "prerank_scoring_duration_seconds_count",
        "prerank_shadow_scoring_duration_seconds_sum",
        "prerank_shadow_scoring_duration_seconds_count",
        'prerank_shadow_requests_total{outcome="scored"}',
        'prerank_shadow_requests_total{outcome="dropped"}',
    )
    for line in text.splitlines():
        for name in wanted:
            if line.startswith(name):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.openloop import bodies
    from loadtest.run import cpu_model
    from models.provenance import code_version

    py = sys.executable
    report: dict[str, Any] = {
        "machine": cpu_model(),
        "code_version": code_version(),
        "command": "prerank shadow-bench " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_rps": args.rate,
        "candidates": args.candidates,
        "sample": args.sample,
        "seconds_per_phase": args.seconds,
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="prerank-shadow-") as tmp_dir:
        tmp = Path(tmp_dir)
        store = f"local:{tmp / 'store'}"
        for artifact in (args.candidate, args.live):  # the live one last: it is the pointer
            cmd = [py, "-m", "prerank", "export", str(artifact), "--dataset", args.dataset, "--store", store]
            subprocess.run([*cmd, "--threads", "2"], check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [*_pin("0"), py, "-m", "prerank", "serve", "--store", store, "--port", str(port)]
        with process(serve, url):
            body_file = tmp / "bodies.json"
            body_file.write_text(json.dumps(bodies(url, args.candidates)))
            _k6_all([url], body_file, args.rate, 5, tmp, "warmup")
            shadow_on = [py, "-m", "prerank", "experiment", "shadow", "v000001", "--sample", str(args.sample)]
            shadow_off = [py, "-m", "prerank", "experiment", "shadow-end"]
            for r in range(args.rounds):
                row: dict[str, Any] = {}
                for phase in ("baseline", "shadow"):
                    cmd = shadow_on if phase == "shadow" else shadow_off
                    subprocess.run([*cmd, "--store", store], check=True, stdout=subprocess.DEVNULL)
                    deadline = time.monotonic() + 30
                    while (Client(url).call("GET", "/readyz")["shadow"] is not None) != (phase == "shadow"):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the server did not apply the {phase} phase's shadow config")
                        time.sleep(0.2)
                    before = _scrape(url)
                    row[phase] = _k6_all([url], body_file, args.rate, args.seconds, tmp, f"{phase}-{r}")
                    after = _scrape(url)
                    live_n = _delta(after, before, "prerank_scoring_duration_seconds_count")
                    shadow_n = _delta(after, before, "prerank_shadow_scoring_duration_seconds_count")
                    row[phase]["live_scoring_mean_ms"] = round(
                        1e3 * _delta(after, before, "prerank_scoring_duration_seconds_sum") / max(live_n, 1), 3
                    )
                    row[phase]["shadow_scoring_mean_ms"] = round(
                        1e3 * _delta(after, before, "prerank_shadow_scoring_duration_seconds_sum") / max(shadow_n, 1), 3
                    )
                    row[phase]["shadow_scored"] = int(
                        _delta(after, before, 'prerank_shadow_requests_total{outcome="scored"}')
                    )
                    row[phase]["shadow_dropped"] = int(
                        _delta(after, before, 'prerank_shadow_requests_total{outcome="dropped"}')
                    )
                report["rounds"].append(row)
    base = [x["baseline"]["p99_ms"] for x in report["rounds"]]
    shadow = [x["shadow"]["p99_ms"] for x in report["rounds"]]
    report["p99_ratio_of_medians"] = round(float(np.median(shadow) / np.median(base)), 3)
    live_ms = float(np.mean([x["shadow"]["live_scoring_mean_ms"] for x in report["rounds"]]))
    cand_ms = float(np.mean([x["shadow"]["shadow_scoring_mean_ms"] for x in report["rounds"]]))
    report["candidate_slowdown"] = round(cand_ms / live_ms, 2) if live_ms else None
    report["failed"] = sum(x[p]["failed"] for x in report["rounds"] for p in ("baseline", "shadow"))
    report["dropped_arrivals"] = sum(x[p]["dropped"] for x in report["rounds"] for p in ("baseline", "shadow"))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Shadow scoring under open-loop load ({report['machine']})",
        "",
        f"`{report['command']}` at {report['started']}, code {report['code_version']}.",
        f"{report['rate_rps']} req/s of {report['candidates']} candidates, {len(report['rounds'])} rounds of "
        f"{report['seconds_per_phase']} s without, then {report['seconds_per_phase']} s with the shadow "
        f"(sample {report['sample']}). Candidate {report['candidate_slowdown']}x slower per request than live; "
        f"live p99 ratio (median with / median without): **{report['p99_ratio_of_medians']}**; "
        f"failed {report['failed']}, dropped arrivals {report['dropped_arrivals']}.",
        "",
        "| round | phase | p50 ms | p99 ms | p99.9 ms | live scoring mean ms | shadow scoring mean ms | "
        "shadow scored | shadow dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(report["rounds"]):
        for phase, r in row.items():
            lines.append(
                f"| {i} | {phase} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | "
                f"{r['live_scoring_mean_ms']} | {r['shadow_scoring_mean_ms']} | {r['shadow_scored']} | "
                f"{r['shadow_dropped']} |"
            )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prerank shadow-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("live", type=Path, help="the live model's artifact")
    p.add_argument("candidate", type=Path, help="the shadow candidate's artifact (a slower model)")
    p.add_argument("--dataset", default="synthetic:50000")
    p.add_argument("--rate", type=int, default=50)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--sample", type=float, default=1.0)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/shadow"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report), end="")  # noqa: T201
    return 0
