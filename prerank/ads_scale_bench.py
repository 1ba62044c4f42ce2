"""`prerank ads-scale-bench`: export, publish, load, hot swap, latency and ANN recall against corpus size."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prerank.job import UsageError, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "ads-scale-bench",
        "HIT on synthetic corpora of growing size: training, export + publish (Redis + a blob directory), server "
        "load and hot-swap memory, open-loop latency at 10k candidates, and ANN recall@100 (a private redis-server).",
    )
    p.add_argument("--ads", type=int, nargs="+", default=[50_000, 1_000_000, 10_000_000], help="corpus sizes")
    p.add_argument("--rows", type=int, default=2_000_000, help="log rows of each synthetic dataset")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="stored ad vectors")
    p.add_argument(
        "--sparse-ids", action="store_true", help="ads keep distinct random 64-bit ids (synthetic:N:ROWS:ids64)"
    )
    p.add_argument("--recall-users", type=int, default=1000, help="users for recall@100 (0: skip)")
    p.add_argument("--rates", type=int, nargs="+", default=[25, 50, 100], help="open-loop offered req/s")
    p.add_argument("--seconds", type=int, default=15, help="seconds per open-loop step")
    p.add_argument("--work", type=Path, default=Path("runs/scale"), help="artifacts and blob directories")
    p.add_argument("--out", type=Path, default=Path("results/scale/ads"))
    return p


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "prerank", *args], check=True)


def _plot(rows: list[dict[str, Any]], latency: dict[int, list[dict[str, Any]]], path: Path) -> None:
    from tools.plotting import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ads = [r["ads"] for r in rows]
    left.plot(ads, [r["version_bytes"] / 2**20 for r in rows], marker="o", label="version bytes")
    left.plot(ads, [r["rss_one_version"] / 2**20 for r in rows], marker="s", label="server RSS, one version")
    left.plot(ads, [r["peak_rss_across_swap"] / 2**20 for r in rows], marker="^", label="server peak across a swap")
    left.set_title("memory, MiB")
    for rate in sorted({s["offered_rps"] for steps in latency.values() for s in steps}):
        pts = [(n, s) for n, steps in sorted(latency.items()) for s in steps if s["offered_rps"] == rate]
        right.plot([n for n, _ in pts], [s["p99_ms"] for _, s in pts], marker="o", label=f"p99 at {rate} req/s")
        right.plot([n for n, _ in pts], [s["p50_ms"] for _, s in pts], marker=".", ls=":", label=f"p50 at {rate} req/s")
    right.set_title("/prerank latency at 10k candidates, ms (open loop)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("ads in the index")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _run(args: argparse.Namespace) -> None:
    if shutil.which("redis-server") is None:
        raise UsageError("ads-scale-bench starts its own redis-server; none is on PATH")
    import redis

    from models.provenance import code_version, machine
    from tools.ads_scale_bench import empty_server_rss, export_once, serve_and_swap
    from tools.recall import measure_recall
    from tools.user_store_bench import private_redis

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with private_redis() as base:
        root = base.rsplit("/", 1)[0]
        empty = empty_server_rss(f"{root}/0")  # db 0 stays empty: the process without a version
        stores = {}
        for db, n in enumerate(args.ads, start=1):
            data = f"synthetic:{n}:{args.rows}" + (":ids64" if args.sparse_ids else "")
            artifact = args.work / (f"hit-{n}" + ("-ids64" if args.sparse_ids else ""))
            if not (artifact / "metrics.json").exists():
                _cli("train", "--dataset", data, "--model", "hit", "--epochs", "1", "--sparse-embeddings",
                     "--threads", "2", "--no-progress", "--out", str(artifact))  # fmt: skip
            trained = json.loads((artifact / "metrics.json").read_text())
            store, blobs = f"{root}/{db}", args.work / f"blobs-{n}"
            shutil.rmtree(blobs, ignore_errors=True)
            export_args = [str(artifact), "--dataset", data, "--store", store, "--blobs", str(blobs), "--keep", "2"]
            export_args += ["--dtype", args.dtype]
            first = export_once(export_args)
            client = redis.Redis.from_url(store)
            live = client.get("prerank:current").decode()
            manifest = json.loads(client.get(f"prerank:version:{live}:manifest"))
            served = serve_and_swap(store, export_args)
            row = {
                "ads": n,
                "dataset": data,
                "dtype": args.dtype,
                "train_s": round(trained["wall_seconds"], 1),
                "train_epoch_s": round(trained["seconds_per_epoch"], 1),
                "train_rows": trained["rows"],
                "test_auc": round(trained["test_auc"], 4),
                "export_publish_s": round(first["seconds"], 1),
                "export_peak_rss": first["peak_rss"],
                "version_bytes": sum(f["size"] for f in manifest["files"]),
                "redis_bytes": manifest["redis_bytes"],
                **served,
            }
            row["swap_peak_over_one"] = round(row["peak_rss_across_swap"] / row["rss_one_version"], 2)
            # against the version's bytes: what the swap holds beyond the process itself
            row["empty_server_rss"] = empty
            row["swap_peak_over_version_bytes"] = round((row["peak_rss_across_swap"] - empty) / row["version_bytes"], 2)
            rows.append(row)
            stores[n] = store
            print(json.dumps(row), flush=True)
        os.sync()  # flush the version files just written: writeback would land inside the latency steps
        openloop = args.out / "openloop"
        targets = [x for n, s in stores.items() for x in ("--target", f"ads-{n}={s}")]
        _cli("openloop", *targets, "--candidates", "10000", "--rates", *map(str, args.rates),
             "--seconds", str(args.seconds), "--out", str(openloop))  # fmt: skip
        sweep = json.loads((openloop / "report.json").read_text())["targets"]
        latency = {n: sweep[f"ads-{n}"]["10000"]["steps"] for n in stores}
        recall = {}
        if args.recall_users:
            for n, store in stores.items():
                measured = measure_recall(store, [100], args.recall_users)
                recall[n] = {**measured["results"][0], "heads": measured["heads"], "index": measured["index"]}
                print(json.dumps({"ads": n, **recall[n]}), flush=True)
    report = {
        "command": "prerank ads-scale-bench " + " ".join(args.argv),
        "machine": machine(),
        "code_version": code_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
        "latency_10k": {str(n): steps for n, steps in latency.items()},
        "recall_at_100": {str(n): r for n, r in recall.items()},
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    mib = 2**20
    lines = [
        f"# Corpus size: export, publish, load, hot swap, latency, recall ({report['machine']})",
        "",
        f"`{report['command']}`; code {report['code_version']}. HIT (1 epoch, sparse embedding updates) on "
        f"`{rows[0]['dataset'].replace(str(rows[0]['ads']), 'N', 1)}`, ad vectors stored as {args.dtype}"
        f"{', random 64-bit ad ids' if args.sparse_ids else ''}; each version published to a private "
        "redis-server with its files in a local blob directory (`--blobs`); the server is `prerank serve` with "
        "one torch thread; a version's index is read into the process's memory (not memory-mapped). The "
        f"server with nothing published holds {empty / mib:,.0f} MiB; the last column is the swap peak above "
        "that, over the version's bytes.",
        "",
        "| ads | train s | export + publish s | export peak RSS | version bytes | server ready s | server RSS "
        "| peak across a hot swap | peak / one version | (peak - empty) / version bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ads']:,} | {r['train_s']} | {r['export_publish_s']} | {r['export_peak_rss'] / mib:,.0f} MiB "
            f"| {r['version_bytes'] / mib:,.0f} MiB | {r['ready_s']} | {r['rss_one_version'] / mib:,.0f} MiB "
            f"| {r['peak_rss_across_swap'] / mib:,.0f} MiB | {r['swap_peak_over_one']} "
            f"| {r['swap_peak_over_version_bytes']} |"
        )
    lines += ["", "Open loop, 10,000 candidates per request (k6, constant arrival rate):", ""]
    lines += [
        "| ads | offered req/s | p50 ms | p99 ms | p99.9 ms | dropped | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, steps in latency.items():
        for s in steps:
            lines.append(
                f"| {n:,} | {s['offered_rps']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['p999_ms']:.2f} "
                f"| {s['dropped']} | {s['failed']} |"
            )
    if recall:
        lines += ["", f"ANN recall@100 against exact MaxSim, {args.recall_users} users:", ""]
        lines += [
            "| ads | index | recall@100 mean | min | ANN p50 / p99 ms | exact p50 ms |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in recall.items():
            kind = r.get("index", "IVF")
            lines.append(
                f"| {n:,} | {kind} | {r['recall_mean']:.4f} | {r['recall_min']:.2f} | {r['ann_ms_p50']:.2f} / "
                f"{r['ann_ms_p99']:.2f} | {r['exact_ms_p50']:.1f} |"
            )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(rows, latency, args.out / "scale.png")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("ads-scale-bench", parser(), _run, argv)
