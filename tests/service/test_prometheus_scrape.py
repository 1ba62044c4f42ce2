"""A real Prometheus server scrapes a real server and answers a query for the request count."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from offline.export import export
from tests.conftest import free_port, serve

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_the_request_count(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package 'prometheus')")
    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    with serve(f"local:{tmp_path / 'store'}") as url:
        for _ in range(7):
            r = httpx.post(url + "/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2, 3]}})
            assert r.status_code == 200
        target = url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prerank\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            query = 'sum(prerank_http_requests_total{route="/prerank",status="200"})'
            value = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    data = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}).json()
                    if data["data"]["result"]:
                        value = float(data["data"]["result"][0]["value"][1])
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
        finally:
            prom.terminate()
            prom.wait(timeout=10)
    assert value == 7.0


def test_metrics_aggregate_across_two_workers(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import re

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_99999.db").write_bytes(b"stale")  # left by an earlier, crashed run
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    with serve(f"local:{tmp_path / 'store'}", extra_args=("--workers", "2"), env=env) as url:
        time.sleep(2)  # let the second worker finish loading too
        for _ in range(30):  # new connections spread over the workers
            r = httpx.post(url + "/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2]}})
            assert r.status_code == 200
        files = {p.name for p in (tmp_path / "prom").iterdir()}
        text = httpx.get(url + "/metrics").text
    match = re.search(r'prerank_http_requests_total\{route="/prerank",status="200"\} (\S+)', text)
    assert match is not None and float(match.group(1)) == 30.0
    assert len({name.rsplit("_", 1)[-1] for name in files}) >= 2  # metric files of two worker pids
    assert "counter_99999.db" not in files  # the directory is emptied at start
    # workers that exited were marked dead: their live gauges (in-flight, live version) are gone
    left = {p.name for p in (tmp_path / "prom").iterdir()}
    assert not any(name.startswith(("gauge_livesum", "gauge_liveall")) for name in left), left
