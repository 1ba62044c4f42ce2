"""Freshness bounds under open-loop load: event -> visible, delta -> applied, pause -> never ranked.

Starts a real redis-server, publishes a version, starts `prerank ingest` and N replicas
(`prerank serve`, pinned to CPU 0, following the one Redis), then runs two phases of the same
open-loop k6 load (fixed arrival rate, split over the replicas):

* baseline: the load alone;
* fresh: the load while background events flow at --events-per-second, a bid-change delta is
  published every second, and probes measure:
  - event -> visible: every 0.5 s a click for a probe user (no background events touch probe
    users) is added to the stream; the time until a /prerank for that user (asked every 10 ms,
    10 candidates) names it as `user_event`;
  - delta -> applied: the time from the store's acknowledgement of a delta until every
    replica's /readyz shows its change number;
  - pause -> not ranked: an ad among the probe's candidates is paused (acknowledged by the
    store), then every replica is asked until the ad is no longer ranked, and for a second more
    to check that it never comes back (every 0.25 s).

The probes are requests too (about 4-8 a second per replica); they are part of the fresh phase's
load, so the p99 comparison is conservative.

Writes report.json, report.md and latency.png (CDF of the three latencies) to --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from loadtest.run import _pin
from tools.plotting import pyplot
from tools.procs import free_port, wait_until_ready

__all__ = ["main", "parser", "percentiles"]


def percentiles(values: list[float]) -> dict[str, float | int]:
    """n, p50, p99 and max of latencies in ms (NaN-free; n = 0 gives zeros)."""
    if not values:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


class Client:
    """A keep-alive JSON client for one replica (one per thread)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, data, headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
        return json.loads(payload)


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prerank-fresh-redis-") as tmp:
        cmd = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            tmp,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import redis

            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            proc.kill()
            proc.wait()


@contextmanager
def process(cmd: list[str], ready_url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PRERANK_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PRERANK_POLL_SECONDS": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if ready_url is not None:
            wait_until_ready(ready_url, proc, timeout=180)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Fresh:
    """The background flows and the probes of the fresh phase (threads until `stop`)."""

    def __init__(
        self, store: str, urls: list[str], users: list[str], ads: list[int], events_per_second: int, seed: int = 0
    ) -> None:
        import redis

        from storage import RedisKeys

        self.store, self.urls, self.eps, self.seed = store, urls, events_per_second, seed
        self.client = redis.Redis.from_url(store)
        self.keys = RedisKeys()
        self.probe_users, self.background_users = users[:20], users[20:]
        self.ads = ads
        self.stop = threading.Event()
        self.event_ms: list[float] = []
        self.delta_ms: list[float] = []
        self.pause_ms: list[float] = []
        self.pause_violations = 0
        self.events_sent = 0
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=t, daemon=True)
            for t in (self._events, self._probe_events, self._deltas, self._pauses)
        ]

    def __enter__(self) -> Fresh:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _events(self) -> None:
        """Background events at a fixed rate, in 10 ms batches (90% impressions, 10% clicks)."""
        rng = random.Random(1)
        n = 0
        started = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.eps)
            pipe = self.client.pipeline(transaction=False)
            for _ in range(due - n):
                kind = "click" if rng.random() < 0.1 else "impression"
                fields = {
                    "event_id": f"bg{self.seed}-{n}",
                    "user_id": rng.choice(self.background_users),
                    "ad_id": rng.choice(self.ads),
                    "ts": time.time(),
                    "kind": kind,
                }
                pipe.xadd(self.keys.user_events, fields, maxlen=200_000, approximate=True)
                n += 1
            pipe.execute()
            self.events_sent = n
            time.sleep(0.01)

    def _probe_events(self) -> None:
        clients = [Client(u) for u in self.urls]
        i = 0
        while not self.stop.is_set():
            user = self.probe_users[i % len(self.probe_users)]
            client = clients[i % len(clients)]
            eid = f"probe{self.seed}-{i}"
            body = {"user": {"id": user}, "candidates": {"ad_ids": self.ads[:10]}}
            fields = {
                "event_id": eid,
                "user_id": user,
                "ad_id": self.ads[i % len(self.ads)],
                "ts": time.time(),
                "kind": "click",
            }
            t0 = time.perf_counter()
            self.client.xadd(self.keys.user_events, fields)
            while time.perf_counter() - t0 < 10 and not self.stop.is_set():
                try:
                    if client.call("POST", "/prerank", body)["user_event"] == eid:
                        self.event_ms.append((time.perf_counter() - t0) * 1e3)
                        break
                except (OSError, RuntimeError, http.client.HTTPException) as exc:
                    self.errors.append(f"event probe: {exc}")
                time.sleep(0.01)
            i += 1
            self.stop.wait(0.5)

    def _deltas(self) -> None:
        """A bid-change delta every second; the time until every replica shows it."""
        from storage.deltas import AdDelta, publish_delta

        clients = [Client(u) for u in self.urls]
        rng = np.random.default_rng(2)
        live = self.client.get(self.keys.current).decode()
        model = json.loads(self.client.get(self.keys.manifest(live)))["model_version"]
        while not self.stop.is_set():
            ids = rng.choice(self.ads, size=10, replace=False).astype(np.int64)
            delta = AdDelta(live, model, bid_ids=ids, bid_values=rng.uniform(0.5, 2.0, 10).astype(np.float32))
            seq = publish_delta(self.client, self.keys, delta)
            t0 = time.perf_counter()
            pending = set(range(len(clients)))
            while pending and time.perf_counter() - t0 < 10:
                for r in list(pending):
                    if clients[r].call("GET", "/readyz")["delta_seq"] >= seq:
                        pending.discard(r)
                if pending:
                    time.sleep(0.01)
            if not pending:
                self.delta_ms.append((time.perf_counter() - t0) * 1e3)
            self.stop.wait(max(0.0, 1.0 - (time.perf_counter() - t0)))

    def _pauses(self) -> None:
        """Every 3 s: pause one of the probe's candidates; until no replica ranks it; resume it."""
        from storage.deltas import set_paused

        clients = [Client(u) for u in self.urls]
        candidates = self.ads[10:60]
        body = {"user": {"id": self.probe_users[0]}, "candidates": {"ad_ids": candidates}}
        i = 0
        while not self.stop.wait(3.0):
            ad = candidates[i % len(candidates)]
            set_paused(self.client, self.keys, [ad], True)
            t0 = time.perf_counter()  # the store acknowledged the pause
            gone = [False] * len(clients)
            while not all(gone) and time.perf_counter() - t0 < 10:
                for r, c in enumerate(clients):
                    gone[r] = gone[r] or ad not in c.call("POST", "/prerank", body)["ad_ids"]
                time.sleep(0.01)
            self.pause_ms.append((time.perf_counter() - t0) * 1e3)
            settle = time.perf_counter()
            while time.perf_counter() - settle < 1.0:  # once gone, it must stay gone
                for c in clients:
                    if ad in c.call("POST", "/prerank", body)["ad_ids"]:
                        self.pause_violations += 1
                time.sleep(0.25)
            set_paused(self.client, self.keys, [ad], False)
            i += 1


def _k6_all(urls: list[str], body_file: Path, rate: int, seconds: int, tmp: Path, tag: str) -> dict[str, Any]:
    """One k6 per replica at rate / len(urls), concurrently; their counts summed, latencies the worst."""
    from loadtest.openloop import run_step

    results: list[dict[str, Any]] = [{} for _ in urls]

    def one(i: int) -> None:
        results[i] = run_step(urls[i], body_file, max(1, rate // len(urls)), seconds, tmp / f"{tag}-{i}.json")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "offered_rps": rate,
        "requests": sum(r["requests"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "p999_ms": max(r["p999_ms"] for r in results),
        "per_replica": results,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loadtest.openloop import bodies
    from loadtest.run import cpu_model
    from models.provenance import code_version

    report: dict[str, Any] = {
        "machine": cpu_model(),
        "code_version": code_version(),
        "command": "prerank freshness " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate_rps": args.rate,
        "candidates": args.candidates,
        "events_per_second": args.events_per_second,
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "bounds_ms": {"event": 1000, "delta": 2000, "pause": 2000},
        "runs": {},
    }
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="prerank-fresh-") as tmp_dir:
        tmp = Path(tmp_dir)
        for n_replicas in args.replicas:
            with redis_server() as (store, redis_pid), ExitStack() as stack:
                export = [
                    py,
                    "-m",
                    "prerank",
                    "export",
                    str(args.artifact),
                    "--dataset",
                    args.dataset,
                    "--store",
                    store,
                    "--threads",
                    "2",
                ]
                subprocess.run(export, check=True, stdout=subprocess.DEVNULL)
                ingest = stack.enter_context(process([py, "-m", "prerank", "ingest", "--store", store]))
                pids = {"redis": [redis_pid], "ingest": [ingest.pid], "replicas": [], "harness": [os.getpid()]}
                urls = []
                for _ in range(n_replicas):
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    cmd = [*_pin("0"), py, "-m", "prerank", "serve", "--store", store, "--port", str(port)]
                    pids["replicas"].append(stack.enter_context(process(cmd, url)).pid)
                    urls.append(url)
                sample = Client(urls[0]).call("GET", "/sample?ads=2000&users=500")
                users = [str(u) for u in sample["user_ids"]]
                ads = [int(a) for a in sample["ad_ids"]]
                body_file = tmp / "bodies.json"
                body_file.write_text(json.dumps(bodies(urls[0], args.candidates)))
                _k6_all(urls, body_file, args.rate, 5, tmp, "warmup")
                rounds: list[dict[str, Any]] = []
                probes: dict[str, list[float]] = {"event": [], "delta": [], "pause": []}
                violations = sent = 0
                errors: list[str] = []
                for r in range(args.rounds):  # alternate the phases: p99 of one short phase is noisy
                    cpu0 = cpu_seconds(pids)
                    baseline = _k6_all(urls, body_file, args.rate, args.seconds, tmp, f"base{n_replicas}-{r}")
                    cpu1 = cpu_seconds(pids)
                    with Fresh(store, urls, users, ads, args.events_per_second, seed=r) as fresh:
                        loaded = _k6_all(urls, body_file, args.rate, args.seconds, tmp, f"fresh{n_replicas}-{r}")
                    cpu2 = cpu_seconds(pids)
                    baseline["cpu_share"] = {k: round((cpu1[k] - cpu0[k]) / args.seconds, 3) for k in pids}
                    loaded["cpu_share"] = {k: round((cpu2[k] - cpu1[k]) / args.seconds, 3) for k in pids}
                    rounds.append({"baseline": baseline, "fresh": loaded})
                    probes["event"] += fresh.event_ms
                    probes["delta"] += fresh.delta_ms
                    probes["pause"] += fresh.pause_ms
                    violations += fresh.pause_violations
                    sent += fresh.events_sent
                    errors += fresh.errors
                left = stack_ingest_lag(store)
            base_p99 = [float(x["baseline"]["p99_ms"]) for x in rounds]
            fresh_p99 = [float(x["fresh"]["p99_ms"]) for x in rounds]
            report["runs"][str(n_replicas)] = {
                "rounds": rounds,
                "baseline_p99_ms": base_p99,
                "fresh_p99_ms": fresh_p99,
                "p99_ratio_of_medians": round(float(np.median(fresh_p99) / np.median(base_p99)), 3),
                "failed": sum(x[p]["failed"] for x in rounds for p in ("baseline", "fresh")),
                "dropped": sum(x[p]["dropped"] for x in rounds for p in ("baseline", "fresh")),
                "event_to_visible": percentiles(probes["event"]),
                "delta_to_applied": percentiles(probes["delta"]),
                "pause_to_unranked": percentiles(probes["pause"]),
                "pause_violations": violations,
                "background_events_sent": sent,
                "events_left_unacknowledged": left,
                "probe_errors": errors[:20],
                "raw_ms": probes,
            }
    return report


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds of each group of processes so far (Linux /proc; threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        out[name] = total
    return out


def stack_ingest_lag(store: str) -> int:
    """Events the consumer group had not acknowledged when the phase ended."""
    import redis

    from storage import RedisKeys

    keys = RedisKeys()
    client = redis.Redis.from_url(store)
    try:
        groups = client.xinfo_groups(keys.user_events)
    except redis.ResponseError:
        return -1
    return int(sum(int(g.get("lag") or 0) + int(g.get("pending") or 0) for g in groups))


def markdown(report: dict[str, Any]) -> str:
    b = report["bounds_ms"]
    lines = [
        f"# Freshness under open-loop load ({report['machine']})",
        "",
        f"`{report['command']}` at {report['started']}, code {report['code_version']}.",
        f"Load: {report['rate_rps']} req/s of {report['candidates']} candidates (k6 constant arrival rate, split over "
        f"the replicas), {report['rounds']} rounds of a {report['seconds_per_phase']} s baseline phase then a "
        f"{report['seconds_per_phase']} s fresh phase; the fresh phase adds {report['events_per_second']} "
        "events/s, a bid-change delta per second and a pause every 3 s.",
        "",
        f"| replicas | event -> visible p50 / p99 / max (bound {b['event']}) | delta -> every replica p50 / p99 / max "
        f"(bound {b['delta']}) | pause -> unranked p99 / max (bound {b['pause']}) | pause violations | "
        "load p99 per round, baseline / fresh | ratio of medians | failed | dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in report["runs"].items():
        e, d, p = r["event_to_visible"], r["delta_to_applied"], r["pause_to_unranked"]
        base = ", ".join(f"{x:.1f}" for x in r["baseline_p99_ms"])
        fresh = ", ".join(f"{x:.1f}" for x in r["fresh_p99_ms"])
        lines.append(
            f"| {n} | {e['p50_ms']} / {e['p99_ms']} / {e['max_ms']} ms (n={e['n']}) | "
            f"{d['p50_ms']} / {d['p99_ms']} / {d['max_ms']} ms (n={d['n']}) | {p['p99_ms']} / {p['max_ms']} ms "
            f"(n={p['n']}) | {r['pause_violations']} | {base} / {fresh} ms | {r['p99_ratio_of_medians']} | "
            f"{r['failed']} | {r['dropped']} |"
        )
    lines += [
        "",
        "CPU used per phase (cores: CPU seconds / wall seconds; the replicas share CPU 0, the rest CPU 1 with k6):",
        "",
        "| replicas | phase | replicas | ingest | redis | harness (events, probes) |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in report["runs"].items():
        for phase in ("baseline", "fresh"):
            c = {
                k: float(np.mean([x[phase]["cpu_share"][k] for x in r["rounds"]]))
                for k in r["rounds"][0][phase]["cpu_share"]
            }
            lines.append(
                f"| {n} | {phase} | {c['replicas']:.3f} | {c['ingest']:.3f} | {c['redis']:.3f} | {c['harness']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(report["runs"]), figsize=(6 * len(report["runs"]), 4), squeeze=False)
    for ax, (n, r) in zip(axes[0], report["runs"].items(), strict=True):
        for name, values in r["raw_ms"].items():
            if values:
                v = np.sort(values)
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{name} (n={len(v)})")
        ax.set_xscale("log")
        ax.set_xlabel("update -> visible (ms)")
        ax.set_ylabel("fraction")
        ax.set_title(f"{n} replica(s), {report['rate_rps']} req/s + {report['events_per_second']} events/s")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prerank freshness", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="model artifact to publish")
    p.add_argument(
        "--dataset", default="synthetic:50000", help="dataset whose ads are published (default: synthetic:50000)"
    )
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to measure (default: 1 2)")
    p.add_argument("--rate", type=int, default=50, help="offered /prerank rate over all replicas (default: 50)")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--events-per-second", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=30, help="seconds per phase (default: 30)")
    p.add_argument("--rounds", type=int, default=3, help="baseline/fresh phase pairs, alternated (default: 3)")
    p.add_argument("--out", type=Path, default=Path("results/freshness"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    for tool in ("redis-server", "k6"):
        if shutil.which(tool) is None:
            print(f"prerank freshness: error: {tool} is not installed", file=sys.stderr)  # noqa: T201
            return 2
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "latency.png")
    print(markdown(report), end="")  # noqa: T201
    return 0
