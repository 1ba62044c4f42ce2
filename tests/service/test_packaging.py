"""The serving path needs only the `serve` extra: no offline libraries, and /docs without a CDN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings

OFFLINE_ONLY = ("pandas", "sklearn", "matplotlib", "tqdm", "pyarrow", "locust", "offline", "tools.bench")

SCRIPT = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ImportError(f"{{name}} is not part of the serve extra")
        return None
sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from service.app import create_app
from service.config import Settings
with TestClient(create_app(Settings(store="local:{store}", poll_seconds=60))) as c:
    r = c.post("/prerank", json={{"user": {{"id": "1"}}, "candidates": {{"ad_ids": [1, 2, 3]}}}})
    assert r.status_code == 200, r.text
    assert c.get("/docs").status_code == 200
print("served", r.json()["index_version"])
"""


def test_the_server_runs_without_any_offline_library(store: Path) -> None:
    code = SCRIPT.format(blocked=OFFLINE_ONLY, store=store)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "served v000001"


def test_docs_are_served_from_the_package(store: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        page = client.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn.jsdelivr" not in page
        js = client.get("/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        assert client.get("/docs-assets/swagger-ui.css").status_code == 200
