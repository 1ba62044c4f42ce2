"""Quantised serving: what is stored really is bf16 / int8, and offline quantised scores equal served ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.artifact import load_index
from offline.export import export
from offline.quant import quantized_predictions
from service.app import create_app
from service.config import Settings
from service.scorer import Scorer
from service.store import LocalStore


@pytest.fixture(scope="module")
def stores(tiny, tiny_hit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    out = {}
    for dtype in ("float32", "bfloat16", "int8"):
        root = tmp_path_factory.mktemp(f"store-{dtype}")
        export(tiny_hit.artifact, tiny, f"local:{root}", dtype)
        out[dtype] = root
    return out


def test_stored_dtype_and_int8_scales_are_amax_over_127(stores: dict[str, Path]) -> None:
    fp32 = load_index(stores["float32"] / "versions" / "v000001").rows
    bf16 = load_index(stores["bfloat16"] / "versions" / "v000001").rows
    int8 = load_index(stores["int8"] / "versions" / "v000001").rows
    assert fp32.vectors.dtype == torch.float32 and fp32.scales is None
    assert bf16.vectors.dtype == torch.bfloat16 and bf16.scales is None
    assert int8.vectors.dtype == torch.int8 and int8.scales is not None
    amax = fp32.vectors.flatten(1).abs().amax(1)
    torch.testing.assert_close(int8.scales, amax / 127, rtol=1e-6, atol=0)
    assert int(int8.vectors.flatten(1).abs().amax(1).min()) == 127  # each row's largest entry maps to 127
    torch.testing.assert_close(bf16.vectors.float(), fp32.vectors, rtol=1 / 128, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_offline_quantised_scores_equal_what_the_service_scores(tiny, tiny_hit, stores, dtype: str) -> None:  # type: ignore[no-untyped-def]
    split = tiny.test
    offline = quantized_predictions(tiny_hit.model, split, dtype)
    version = LocalStore(f"local:{stores[dtype]}").load("v000001")
    scorer = Scorer()
    served = np.empty(len(split), np.float32)
    for user_row in np.unique(split.user_rows[:600]):
        rows = np.flatnonzero(split.user_rows[:600] == user_row)
        user = scorer.encode_user(version, split.users.take(np.array([user_row])))
        logits = scorer.score_rows(version, user, split.ad_rows[rows])
        served[rows] = torch.sigmoid(logits).numpy()
    np.testing.assert_allclose(served[:600], offline[:600], atol=2e-5 if dtype == "float32" else 1e-3, rtol=0)
    if dtype == "float32":
        return
    fp32 = quantized_predictions(tiny_hit.model, split, "float32")
    assert 0 < np.abs(offline - fp32).max() < 0.05  # quantisation moves scores, a little


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_quantised_versions_serve_end_to_end_close_to_fp32(tiny, stores, dtype: str) -> None:  # type: ignore[no-untyped-def]
    ads = [int(a) for a in tiny.ad_ids[:80]]
    body = {"user": {"id": "5"}, "candidates": {"ad_ids": ads}}
    pctr = {}
    for name in ("float32", dtype):
        with TestClient(create_app(Settings(store=f"local:{stores[name]}", poll_seconds=60))) as client:
            r = client.post("/prerank", json=body)
        assert r.status_code == 200, r.text
        pctr[name] = dict(zip(r.json()["ad_ids"], r.json()["pctr"], strict=True))
    diff = np.array([pctr[dtype][a] - pctr["float32"][a] for a in ads])
    assert 0 < np.abs(diff).max() < 0.02
