"""SIGTERM while a request is in flight: the request completes, then the server exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from offline.export import export
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_sigterm_finishes_the_in_flight_request(tiny, tiny_hit, tmp_path: Path, server: str) -> None:  # type: ignore[no-untyped-def]
    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    port = free_port()
    store = f"local:{tmp_path / 'store'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prerank", "serve", "--store", store, "--port", str(port), "--server", server],
        env={**os.environ, "PRERANK_TORCH_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = json.dumps({"user": {"id": "2"}, "candidates": {"ad_ids": tiny.ad_ids[:30].tolist()}}).encode()
        head = (
            f"POST /prerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body[:10])  # the request is in flight: half its body has arrived
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # still draining
            sock.sendall(body[10:])
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["index_version"] == "v000001"
        # uvicorn re-raises the signal after draining, so the exit status is -SIGTERM (or 0)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
