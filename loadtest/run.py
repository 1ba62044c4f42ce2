"""Headless load-test runner: fixed Locust steps per candidate count and per model, one report.

For each `--target NAME=STORE` it starts `prerank serve --store STORE` (pinned to CPU 0 when
`taskset` exists, one torch thread), then for each candidate count runs Locust headless (pinned
to the other CPUs) for `--seconds`, reads Locust's CSV and records p50/p95/p99, throughput and
failures. Writes report.json, report.md and latency.png to --out.

Usage:
  prerank loadtest --target hit=local:runs/store-hit --target dssm=local:runs/store-dssm \\
      --candidates 100 1000 5000 10000 --users 4 --seconds 30 --out results/loadtest
  prerank loadtest --url http://127.0.0.1:8000 ...   # an already running server
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tools.plotting import pyplot
from tools.procs import ServerExited, free_port, wait_until_ready

HERE = Path(__file__).resolve().parent

logger = logging.getLogger(__name__)


def _pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def server_cpus(cores: int = 1) -> str:
    """The CPUs a server under test is pinned to: the first `cores` of the machine."""
    return "0" if cores <= 1 else f"0-{cores - 1}"


def client_cpus(cores: int = 1) -> str:
    """The CPUs a load generator runs on: the ones the server under test does not (at least one)."""
    last = (os.cpu_count() or 2) - 1
    return f"{min(cores, last)}-{max(min(cores, last), last)}"


@contextmanager
def server_process(
    store: str,
    extra: tuple[str, ...] = (),
    code: Path | None = None,
    env: dict[str, str] | None = None,
    cores: int = 1,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`prerank serve` on a free port, pinned to CPU 0 (taskset execs it: the pid is the server's);
    yields its URL and process once /readyz answers 200. With `cores` > 1 it runs `--workers cores`
    processes pinned to the first `cores` CPUs.

    Args:
        code: a checkout to run the server from (e.g. a git worktree of an earlier commit):
            `python -m prerank` started there imports that tree's code, with this environment's
            packages. Default: this code.
        env: settings for this server (PRERANK_DEVICE=cuda, ...), over the environment's.
    """
    port = free_port()
    full_env = {**os.environ, "PRERANK_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [*_pin(server_cpus(cores)), sys.executable, "-m", "prerank", "serve", "--store", store, "--port", str(port)]
    cmd += [*extra, *(("--workers", str(cores)) if cores > 1 else ())]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, timeout=120)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@contextmanager
def server(
    store: str,
    extra: tuple[str, ...] = (),
    code: Path | None = None,
    env: dict[str, str] | None = None,
    cores: int = 1,
) -> Iterator[str]:
    """`prerank serve` on a free port, pinned to CPU 0 (`cores` > 1: that many worker processes on
    the first `cores` CPUs); yields its URL once /readyz answers 200."""
    with server_process(store, extra, code, env, cores) as (url, _):
        yield url


#: Peer model servers (python -m MODULE --store URL --port P) and the path that answers once the
#: app is deployed, with what its body must hold.
PEERS = {
    "litserve": ("peers.litserve_app", "/health", b""),
    "rayserve": ("peers.rayserve_app", "/-/routes", b"/prerank"),
}


@contextmanager
def peer_server(kind: str, store: str, attempts: int = 2) -> Iterator[str]:
    """A peer model server (PEERS) over `store`'s live version, pinned to CPU 0 with one torch
    thread as `server` is; every process it starts (Ray's raylet, LitServe's workers) is stopped.

    A peer that exits before it is ready is started again, up to `attempts` times in all (Ray's
    cluster start can time out on a busy 2-core machine); each failure's output is logged, and the
    last one's is in the error.
    """
    module, path, expect = PEERS[kind]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    for attempt in range(1, attempts + 1):
        port = free_port()
        cmd = [*_pin("0"), sys.executable, "-m", module, "--store", store, "--port", str(port), "--threads", "1"]
        fd, name = tempfile.mkstemp(prefix=f"peer-{kind}-", suffix=".log")  # its output, for the error
        os.close(fd)
        log = Path(name)
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_ready(url, proc, timeout=180, path=path, expect=expect, log=log)
            except ServerExited as exc:
                if attempt == attempts:
                    raise
                logger.warning("%s peer, attempt %d of %d: %s", kind, attempt, attempts, exc)
                continue
            yield url
            return
        finally:
            log.unlink(missing_ok=True)
            _stop_session(proc)


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the peer left behind in its session


def locust_command(url: str, users: int, seconds: int, csv_prefix: Path, cpus: str, *extra: str) -> list[str]:
    """Headless Locust on our locustfile, pinned to `cpus`, writing CSVs under `csv_prefix`."""
    return [
        *_pin(cpus),
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--host",
        url,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        *extra,
    ]


def locust_step(
    url: str, candidates: int, users: int, seconds: int, prefix: Path, encoding: str = "json"
) -> dict[str, Any]:
    """One headless Locust run at a fixed candidate count; returns the aggregated row.

    Percentiles come from the raw response times (Locust's CSV rounds them to whole ms); the
    CSV's own values are kept beside them.
    """
    cmd = locust_command(url, users, seconds, prefix, f"1-{max(1, (os.cpu_count() or 2) - 1)}")
    raw = Path(f"{prefix}_raw_ms.txt")
    raw.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PRERANK_CANDIDATES": str(candidates),
        "PRERANK_ENCODING": encoding,
        "PRERANK_RAW_TIMINGS": str(raw),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no stats: {proc.stderr[-1000:]}")
    row = next(r for r in csv.DictReader(stats.open()) if r["Name"] == "Aggregated")
    step = {
        "candidates": candidates,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "percentiles_from": "locust csv (whole ms)",
        "locust_exit": proc.returncode,
    }
    if raw.exists():
        times = sorted(float(t) for t in raw.read_text().split())
        if times:
            step.update({f"p{q}_ms": _percentile(times, q) for q in (50, 95, 99)})
            step["timed_requests"] = len(times)
            step["percentiles_from"] = "raw response times"
    return step


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list."""
    pos = (len(sorted_values) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}; {report['users']} Locust users per step, {report['seconds']} s per step; "
        f"candidate columns sent as {report.get('encoding', 'json')}; percentiles from raw response times.",
        "",
        "| model | candidates | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, steps in report["models"].items():
        for s in steps:
            lines.append(
                f"| {name} | {s['candidates']} | {s['requests']} | {s['failures']} | {s['rps']:.1f} | "
                f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} |"
            )
    names = list(report["models"])
    pairs = report.get("ratios") or [(name, names[-1]) for name in names[:-1]]
    if pairs:
        lines += ["", "End-to-end latency ratios (same run):", ""]
    for top, bottom in pairs:
        for a, b in zip(report["models"][top], report["models"][bottom], strict=True):
            lines.append(
                f"- {top}/{bottom} at {a['candidates']} candidates: p99 {a['p99_ms'] / b['p99_ms']:.2f}, "
                f"p50 {a['p50_ms'] / b['p50_ms']:.2f}"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, steps in report["models"].items():
        xs = [s["candidates"] for s in steps]
        ax.plot(xs, [s["p50_ms"] for s in steps], marker="o", label=f"{name} p50")
        ax.plot(xs, [s["p99_ms"] for s in steps], marker="x", linestyle="--", label=f"{name} p99")
    ax.set_xscale("log")
    ax.set_xlabel("candidates per request")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cpu_model() -> str:
    """This machine's CPU model and core count (standard library only)."""
    cpu = "cpu"
    with suppress(OSError, StopIteration):
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    return f"{cpu}, {os.cpu_count()} cores"


def _machine() -> str:
    return f"{cpu_model()}; server pinned to CPU 0, Locust to the others"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prerank loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", action="append", default=[], help="NAME=STORE_URL (server started per target)")
    parser.add_argument("--url", help="an already running server (instead of --target)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("results/loadtest"))
    parser.add_argument("--encoding", choices=["json", "base64"], default="json", help="candidate column format")
    parser.add_argument("--ratio", action="append", default=[], help="A/B: report A's latency over B's (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    if not args.target and not args.url:
        parser_.error("give --target NAME=STORE or --url URL")
    names = [t.partition("=")[0] for t in args.target] or ["server"]
    ratios = [tuple(r.split("/", 1)) for r in args.ratio]
    bad = [r for r in args.ratio if "/" not in r or not set(r.split("/", 1)) <= set(names)]
    if bad:
        parser_.error(f"--ratio {bad[0]}: give A/B with A and B among {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": _machine(),
        "users": args.users,
        "seconds": args.seconds,
        "encoding": args.encoding,
        "ratios": ratios,
        "models": {},
    }

    def steps(url: str, name: str) -> list[dict[str, Any]]:
        return [
            locust_step(url, n, args.users, args.seconds, args.out / f"{name}-{n}", args.encoding)
            for n in args.candidates
        ]

    if args.url:
        report["models"]["server"] = steps(args.url, "server")
    for target in args.target:
        name, _, store = target.partition("=")
        with server(store) as url:
            report["models"][name] = steps(url, name)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "latency.png")
    print(markdown(report))  # noqa: T201
    failures = sum(s["failures"] for steps_ in report["models"].values() for s in steps_)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
