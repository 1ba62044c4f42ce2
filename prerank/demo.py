"""`prerank demo`: the quick start. Train HIT, publish its index, serve it, send sample requests.

Data rule (the same for every job and the tests): `--data-dir` if given, else
`$PRERANK_DATA_DIR/<dataset>`, else `./data/<dataset>`. With `--dataset auto` (the default) the
demo uses MovieLens-1M when that folder holds it and the built-in synthetic set otherwise, and
says which and why. The server keeps serving until Ctrl-C (`--exit` stops it after the samples).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prerank.job import PROTOCOLS, UsageError, add_threads_arg, job_parser, run_job
from tools.procs import port_in_use, wait_until_ready

__all__ = ["main", "parser", "pick_dataset"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("demo", "Train HIT, publish its index to a local store, serve it and send sample requests.")
    p.add_argument(
        "--dataset",
        default="auto",
        help="auto (MovieLens-1M when found under the data dir, else synthetic), movielens-1m, synthetic, "
        "synthetic:N_ADS or a schema file",
    )
    p.add_argument(
        "--protocol",
        default="clean",
        choices=PROTOCOLS,
        help="MovieLens protocol (default: clean, the honest one; paper reproduces published tables)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="dataset folder (default: $PRERANK_DATA_DIR/<dataset>, else ./data/<dataset>)"
    )
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where the artifact and the store go")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 on MovieLens-1M, 10 on synthetic")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--exit", action="store_true", help="stop the server after the sample requests")
    add_threads_arg(p)
    return p


def pick_dataset(dataset: str, data_dir: Path | None) -> tuple[str, str]:
    """(dataset, why) under the data rule; UsageError when --data-dir names a folder without MovieLens."""
    from offline.data import resolve_data_dir
    from offline.data.movielens import has_movielens

    if dataset != "auto":
        return dataset, "as asked (--dataset)"
    folder = resolve_data_dir(data_dir, "movielens-1m")
    if has_movielens(folder):
        return "movielens-1m", f"found in {folder}"
    if data_dir is not None:
        raise UsageError(f"--data-dir {data_dir}: no MovieLens-1M files there (users.dat and ratings)")
    return "synthetic", f"no MovieLens-1M in {folder} (set PRERANK_DATA_DIR or pass --data-dir)"


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _run(args: argparse.Namespace) -> None:
    if port_in_use(args.port):
        raise UsageError(f"port {args.port} is in use; pass --port")
    dataset, why = pick_dataset(args.dataset, args.data_dir)
    import numpy as np

    from offline.data import load_dataset
    from offline.export import export
    from offline.train import TrainConfig, train

    movielens = dataset == "movielens-1m"
    print(f"[1/4] loading {dataset}{f' ({args.protocol} protocol)' if movielens else ''}: {why}")
    data = load_dataset(dataset, args.protocol, args.data_dir)
    epochs = args.epochs or (30 if movielens else 10)
    artifact = args.workdir / "hit"
    print(f"[2/4] training HIT for up to {epochs} epochs -> {artifact}")
    cfg = TrainConfig(epochs=epochs, batch_size=2048 if movielens else 256, calibration="auto")
    result = train(data, "hit", {}, cfg, artifact)
    print(f"      test AUC {result.metrics['test_auc']:.4f}  LogLoss {result.metrics['test_logloss']:.4f}")
    store = f"local:{args.workdir / 'store'}"
    manifest = export(artifact, data, store)
    print(f"[3/4] published index {manifest['version']}: {manifest['n_ads']} ads x {manifest['shape'][1:]}")
    serve = [sys.executable, "-m", "prerank", "serve", "--store", store, "--port", str(args.port)]
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(serve, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until_ready(url, proc)
        print(f"[4/4] server ready at {url} (docs: {url}/docs); sample requests:")
        rng = np.random.default_rng(0)
        ads = [int(a) for a in rng.choice(data.ad_ids, size=min(200, len(data.ad_ids)), replace=False)]
        bids = [round(float(b), 3) for b in rng.uniform(0.5, 2.0, len(ads))]
        samples: list[dict[str, Any]] = [
            {"user": {"id": data.user_keys[0]}, "candidates": {"ad_ids": ads, "bids": bids}, "top_k": 5},
            {"user": {"id": data.user_keys[1]}, "candidates": {"ad_ids": [*ads[:50], 999_999_999]}, "top_k": 3},
            {"user": {"id": "no-such-user"}, "candidates": {"ad_ids": ads[:20]}, "top_k": 3},
        ]
        for body in samples:
            t0 = time.perf_counter()
            out = _post(url + "/prerank", body)
            ms = (time.perf_counter() - t0) * 1e3
            ranked = ", ".join(f"{a}:{e:.3f}" for a, e in zip(out["ad_ids"], out["ecpm"], strict=True))
            print(
                f"  user={body['user']['id']!s:>14} candidates={len(body['candidates']['ad_ids']):>4} "
                f"known_user={out['user_known']!s:5} unknown_ads={out['unknown_ad_ids']} "
                f"top(ad:eCPM)=[{ranked}]  {ms:.1f} ms"
            )
        again = shlex.join(["prerank", "serve", "--store", store, "--port", str(args.port)])
        if args.exit:
            print(f"stopping the server; to serve this index again: {again}")
            return
        print(f"serving until Ctrl-C; to serve this index again later: {again}", flush=True)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("demo", parser(), _run, argv)
