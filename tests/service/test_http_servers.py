"""uvicorn and granian serve the same app: the same answers, errors and metrics, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from offline.export import export
from tests.conftest import serve

pytestmark = pytest.mark.integration


def test_granian_answers_exactly_as_uvicorn(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = f"local:{tmp_path / 'store'}"
    export(tiny_hit.artifact, tiny, store)
    ids = tiny.ad_ids[:50].tolist()
    requests = [
        {"user": {"id": "3"}, "candidates": {"ad_ids": ids}, "top_k": 10},
        {"user": {"id": "7"}, "candidates": {"ad_ids": ids, "bids": [1.0 + i for i in range(50)]}},
        {"user": {"id": "3"}, "candidates": {"ad_ids": [ids[0], ids[0]]}},  # 422 naming the field
        {"user": {"id": "3"}, "candidates": {"ad_ids": ids}, "top_k": 0},
    ]
    answers: dict[str, list[tuple[int, object]]] = {}
    for server in ("uvicorn", "granian"):
        with serve(store, extra_args=("--server", server)) as url, httpx.Client(base_url=url, timeout=10) as client:
            got = []
            for body in requests:
                r = client.post("/prerank", content=json.dumps(body), headers={"content-type": "application/json"})
                got.append((r.status_code, r.json()))
                if r.status_code == 200:
                    assert "score;dur=" in r.headers["server-timing"]
            bad = client.post("/prerank", content=b"{", headers={"content-type": "application/json"})
            got.append((bad.status_code, bad.json()["detail"][0]["type"]))
            metrics = client.get("/metrics").text
            assert 'prerank_http_requests_total{route="/prerank",status="200"} 2.0' in metrics, server
            answers[server] = got
    assert [status for status, _ in answers["uvicorn"]] == [200, 200, 422, 422, 400]
    assert answers["granian"] == answers["uvicorn"]
