"""The real server over real HTTP: `prerank serve` in a subprocess on a free local port."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from offline.export import export
from offline.train import TrainConfig, train
from tests.conftest import serve

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tiny, tiny_hit, tmp_path: Path) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    export(tiny_hit.artifact, tiny, f"local:{root}")
    with serve(f"local:{root}", poll="0.2") as url:
        yield url, root


def _offline_pctr(tiny, model, user_key: str, ad_ids: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    rows = np.searchsorted(tiny.ad_ids, ad_ids)
    feats = tiny.users.take(np.full(len(rows), tiny.user_keys.index(user_key)))
    feats.update(tiny.ads.take(rows))
    with torch.no_grad():
        return torch.sigmoid(model.eval()(feats)).numpy()


def test_http_ranking_equals_offline_scores(server, tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    ads = tiny.ad_ids[::2]
    bids = np.linspace(2.0, 0.2, len(ads))
    r = httpx.post(
        url + "/prerank", json={"user": {"id": "11"}, "candidates": {"ad_ids": ads.tolist(), "bids": bids.tolist()}}
    )
    assert r.status_code == 200
    body = r.json()
    offline = _offline_pctr(tiny, tiny_hit.model, "11", ads)
    offline_ecpm = offline * bids
    assert body["ad_ids"] == ads[np.argsort(-offline_ecpm, kind="stable")].tolist()
    np.testing.assert_allclose(body["ecpm"], np.sort(offline_ecpm)[::-1], atol=1e-5)


def test_hot_swap_under_traffic_has_no_failed_request(server, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, root = server
    v2 = train(
        tiny, "hit", {"heads": 3}, TrainConfig(epochs=1, batch_size=512, seed=5, progress=False), tmp_path / "v2"
    )
    ads = tiny.ad_ids[:50].tolist()
    seen: list[tuple[str, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.post(url + "/prerank", json={"user": {"id": "4"}, "candidates": {"ad_ids": ads}})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.append((r.json()["index_version"], r.json()["model_version"]))

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)
    export(v2.artifact, tiny, f"local:{root}")  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or seen[-1][0] != "v000002"):
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    thread.join()
    assert failures == []
    versions = [v for v, _ in seen]
    assert versions[0] == "v000001" and versions[-1] == "v000002"
    assert versions == sorted(versions)  # only forward
    assert {m for v, m in seen if v == "v000002"} == {v2.metrics["model_version"]}
    after = httpx.post(url + "/prerank", json={"user": {"id": "4"}, "candidates": {"ad_ids": ads}}).json()
    expected = dict(zip(ads, _offline_pctr(tiny, v2.model, "4", np.array(ads)), strict=True))
    np.testing.assert_allclose(after["pctr"], [expected[a] for a in after["ad_ids"]], atol=1e-5)


def test_a_corrupted_version_is_refused_and_serving_continues(server, tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    url, root = server
    export(tiny_hit.artifact, tiny, f"local:{root}")  # v000002
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and httpx.get(url + "/readyz").json()["live_version"] != "v000002":
        time.sleep(0.1)
    # A damaged copy published as v000003 (as a broken publisher would leave it).
    bad = root / "versions" / "v000003"
    shutil.copytree(root / "versions" / "v000002", bad)
    data = bytearray((bad / "index.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "index.safetensors").write_bytes(bytes(data))
    (root / "CURRENT").write_text("v000003\n")
    deadline = time.monotonic() + 20
    status = {}
    while time.monotonic() < deadline:
        status = httpx.get(url + "/readyz").json()
        if "v000003" in status["refused_versions"]:
            break
        time.sleep(0.2)
    assert "checksum mismatch" in status["refused_versions"]["v000003"]
    assert status["status"] == "ready" and status["live_version"] == "v000002"
    r = httpx.post(url + "/prerank", json={"user": {"id": "4"}, "candidates": {"ad_ids": [1, 2, 3]}})
    assert r.status_code == 200 and r.json()["index_version"] == "v000002"
