"""`prerank demo`: train HIT, publish the index, start the server and send sample requests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from offline.data import load_dataset, resolve_data_dir
from offline.export import export
from offline.train import TrainConfig, train

__all__ = ["run_demo"]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready in time")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def run_demo(dataset: str, protocol: str, data_dir: Path | None, workdir: Path, epochs: int | None, port: int) -> None:
    """Runs the whole path; MovieLens-1M when its files are found, else the synthetic set."""
    if dataset == "synthetic" and data_dir is None and (resolve_data_dir(None, "movielens-1m") / "users.dat").exists():
        dataset = "movielens-1m"
    print(f"[1/4] loading {dataset} ({protocol if dataset != 'synthetic' else 'synthetic'})")
    data = load_dataset(dataset, protocol, data_dir)
    epochs = epochs or (30 if dataset == "movielens-1m" else 10)
    batch = 2048 if dataset == "movielens-1m" else 256
    artifact = workdir / "hit"
    print(f"[2/4] training HIT for up to {epochs} epochs -> {artifact}")
    result = train(data, "hit", {}, TrainConfig(epochs=epochs, batch_size=batch), artifact)
    print(f"      test AUC {result.metrics['test_auc']:.4f}  LogLoss {result.metrics['test_logloss']:.4f}")
    store = f"local:{workdir / 'store'}"
    manifest = export(artifact, data, store)
    print(f"[3/4] published index {manifest['version']}: {manifest['n_ads']} ads x {manifest['shape'][1:]}")
    if not _port_free(port):
        raise OSError(f"port {port} is in use; pass --port")
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.cli", "serve", "--store", store, "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_ready(url, proc)
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
    finally:
        proc.terminate()
        proc.wait(timeout=10)
