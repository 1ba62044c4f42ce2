"""Serving a large ad corpus: export + publish time, load time and memory across a hot swap.

For one store and artifact: `prerank export` into it (a fresh process: wall time and its peak RSS),
`prerank serve` on it (time to ready, RSS with one version), a second export of the same artifact
while the server runs (the hot swap: the server's peak RSS holds both versions for a moment), and
the version's bytes as published. Latency at 10k candidates comes from `prerank openloop` over
the stores of every size in one run; recall from `prerank retrieval-recall`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tools.procs import free_port, memory_bytes, wait_until_ready

__all__ = ["empty_server_rss", "export_once", "serve_and_swap"]

#: Runs `prerank export` in this fresh process, then prints its own peak RSS (VmHWM).
_EXPORT = """
import json, sys, time
from prerank.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
seconds = time.perf_counter() - t0
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss": peak}))
"""


def export_once(args: list[str]) -> dict[str, Any]:
    """`prerank export ARGS` in a fresh process: wall seconds and peak RSS."""
    out = subprocess.run([sys.executable, "-c", _EXPORT, "export", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"export failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _live(url: str) -> str | None:
    with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
        version: str | None = json.loads(resp.read()).get("live_version")
        return version


def serve_and_swap(store: str, export_args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Serves `store`, measures load and RSS, republishes with `export_args` and measures the swap."""
    port = free_port()
    env = {**os.environ, "PRERANK_TORCH_THREADS": "1", "PRERANK_POLL_SECONDS": "0.5"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prerank", "serve", "--store", store, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, timeout=timeout)
        ready_s = time.perf_counter() - t0
        first = _live(url)
        one = memory_bytes("VmRSS", proc.pid)
        swap = export_once(export_args)
        t1 = time.perf_counter()
        while _live(url) == first:
            if time.perf_counter() - t1 > timeout:
                raise RuntimeError("the server did not swap to the new version")
            time.sleep(0.25)
        swapped_s = time.perf_counter() - t1
        time.sleep(2)  # the old version is released after in-flight requests
        return {
            "ready_s": round(ready_s, 1),
            "rss_one_version": one,
            "peak_rss_across_swap": memory_bytes("VmHWM", proc.pid),
            "rss_after_swap": memory_bytes("VmRSS", proc.pid),
            "swap_export": swap,
            "swap_visible_s": round(swapped_s, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def empty_server_rss(store: str, timeout: float = 120) -> int:
    """VmRSS of `prerank serve` (one torch thread) up on `store` with nothing published: the
    process's own bytes (interpreter, torch, FAISS, the app), which a version adds to."""
    port = free_port()
    env = {**os.environ, "PRERANK_TORCH_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prerank", "serve", "--store", store, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", proc, timeout=timeout, path="/healthz")
        time.sleep(1)
        return memory_bytes("VmRSS", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def version_bytes(blobs: Path) -> int:
    """Bytes of the newest version under a blob directory."""
    dirs = sorted((p for p in blobs.rglob("v*") if p.is_dir() and p.parent.name != "model"), key=lambda p: p.name)
    return sum(f.stat().st_size for f in dirs[-1].rglob("*") if f.is_file()) if dirs else 0
