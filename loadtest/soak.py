"""Soak test: steady Locust load on a server while a new version is published every minute.

Starts `prerank serve --store STORE` (CPU 0), runs Locust headless for --minutes at
--users x --user-rps requests per second with --candidates per request, and meanwhile runs
`prerank export ARTIFACT --store STORE ...` every --publish-every seconds. Reports failures, the
number of versions served, and p99 in the first and last minute (Locust's windowed percentiles
from the stats history). Writes soak.json and soak.md to --out.

Usage:
  prerank soak --store local:runs/soak-store --artifact runs/movielens/hit-paper \\
      --export-args "--dataset movielens-1m --data-dir DATA --protocol paper" \\
      --minutes 10 --users 5 --user-rps 50 --candidates 1000 --out results/soak
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.run import _pin, locust_command, server


def _publisher(
    artifact: str, store: str, export_args: str, every: float, stop: threading.Event, log: list[dict[str, Any]]
) -> None:
    while not stop.wait(every):
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                *_pin("1"),
                sys.executable,
                "-m",
                "prerank",
                "export",
                artifact,
                "--store",
                store,
                *shlex.split(export_args),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        log.append(
            {
                "at": time.time(),
                "seconds": time.monotonic() - t0,
                "ok": proc.returncode == 0,
                "output": (proc.stdout or proc.stderr).strip().splitlines()[-1:],
            }
        )


def _window_p99(history: Path, since: float, until: float) -> dict[str, float] | None:
    """Median and max of Locust's windowed p99 samples between two times."""
    rows = [r for r in csv.DictReader(history.open()) if r["Name"] == "Aggregated" and r["99%"] not in ("N/A", "")]
    vals = sorted(float(r["99%"]) for r in rows if since <= float(r["Timestamp"]) < until)
    return {"median": vals[len(vals) // 2], "max": vals[-1]} if vals else None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prerank soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True)
    parser.add_argument("--artifact", required=True, help="model artifact re-published every --publish-every s")
    parser.add_argument("--export-args", default="", help="extra arguments of `prerank export` (dataset flags)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--user-rps", type=float, default=50)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--publish-every", type=float, default=60)
    parser.add_argument("--out", type=Path, default=Path("results/soak"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = int(args.minutes * 60)
    published: list[dict[str, Any]] = []
    with server(args.store) as url:

        def readyz() -> dict[str, Any]:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                result: dict[str, Any] = json.loads(resp.read())
                return result

        first = readyz()
        stop = threading.Event()
        pub = threading.Thread(
            target=_publisher, args=(args.artifact, args.store, args.export_args, args.publish_every, stop, published)
        )
        started = time.time()
        pub.start()
        env = {**os.environ, "PRERANK_CANDIDATES": str(args.candidates), "PRERANK_USER_RPS": str(args.user_rps)}
        proc = subprocess.run(
            locust_command(url, args.users, seconds, args.out / "soak", "1", "--csv-full-history"),
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 300,
            check=False,
        )
        stop.set()
        pub.join()
        last = readyz()
    total = next(r for r in csv.DictReader((args.out / "soak_stats.csv").open()) if r["Name"] == "Aggregated")
    history = args.out / "soak_stats_history.csv"
    report = {
        "minutes": args.minutes,
        "users": args.users,
        "user_rps": args.user_rps,
        "candidates": args.candidates,
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "rps": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "p99_first_minute_ms": _window_p99(history, started + 10, started + 70),
        "p99_last_minute_ms": _window_p99(history, started + seconds - 60, started + seconds + 1),
        "versions_published": sum(p["ok"] for p in published),
        "publish_failures": sum(not p["ok"] for p in published),
        "served_versions": [first.get("live_version"), last.get("live_version")],
        "swaps": last.get("swaps"),
        "locust_exit": proc.returncode,
    }
    (args.out / "soak.json").write_text(json.dumps({**report, "publishes": published}, indent=2) + "\n")
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in report.items())]
    (args.out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))  # noqa: T201
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
