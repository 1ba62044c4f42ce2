"""Admin operations behind a token, and versions that must be refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from models.artifact import ArtifactError, file_sha256
from offline.export import export
from service.app import create_app
from service.config import Settings
from service.store import load_version
from tests.conftest import detail_text

TOKEN = "s3cret-admin-token"


@pytest.fixture
def two_versions(tiny, tiny_hit, tiny_dssm, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    export(tiny_hit.artifact, tiny, f"local:{root}")
    export(tiny_dssm.artifact, tiny, f"local:{root}")
    return root


def test_admin_requires_a_token_and_pins_versions(two_versions: Path, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(store=f"local:{two_versions}", poll_seconds=60, admin_token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2, 3]}}
    with TestClient(app) as c:
        assert c.post("/prerank", json=body).json()["index_version"] == "v000002"
        assert c.post("/admin/pin", json={"version": "v000001"}).status_code == 401
        wrong = c.post("/admin/pin", json={"version": "v000001"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        pinned = c.post("/admin/pin", json={"version": "v000001"}, headers=auth)
        assert pinned.status_code == 200 and pinned.json()["pinned"] == "v000001"
        r = c.post("/prerank", json=body).json()
        assert (r["index_version"], r["model_version"]) == ("v000001", tiny_hit.metrics["model_version"])
        assert c.post("/admin/reload", headers=auth).json()["swapped"] is False  # pinned: not following
        missing = c.post("/admin/pin", json={"version": "v000009"}, headers=auth)
        assert missing.status_code == 409 and "v000009" in detail_text(missing)
        assert c.post("/prerank", json=body).json()["index_version"] == "v000001"  # still serving
        assert c.post("/admin/unpin", headers=auth).json()["live_version"] == "v000002"
        assert c.post("/prerank", json=body).json()["model_version"] == tiny_dssm.metrics["model_version"]


def test_admin_is_disabled_without_a_configured_token(two_versions: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{two_versions}", poll_seconds=60))) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "disabled" in detail_text(r)


def _rewrite_index(directory: Path, vectors: torch.Tensor) -> None:
    tensors = load_file(str(directory / "index.safetensors"))
    tensors["vectors"] = vectors
    save_file(tensors, str(directory / "index.safetensors"))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shape"] = list(vectors.shape)
    manifest["checksums"]["index.safetensors"] = file_sha256(directory / "index.safetensors")
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_model_whose_shapes_do_not_match_its_index_is_refused(two_versions: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(two_versions / "versions" / "v000001", bad)
    rows = load_version(bad).rows
    heads, width = rows.vectors.shape[1:]  # the HIT model's (H_a, p [+ 2]) rows
    _rewrite_index(bad, torch.zeros(len(rows), heads + 1, width))
    with pytest.raises(
        ArtifactError, match=rf"encodes ads as \({heads}, {width}\) but the index stores \({heads + 1}, {width}\)"
    ):
        load_version(bad)


def test_an_index_from_another_model_is_refused(two_versions: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(two_versions / "versions" / "v000001", mixed)
    shutil.rmtree(mixed / "model")
    shutil.copytree(two_versions / "versions" / "v000002" / "model", mixed / "model")  # DSSM model, HIT index
    with pytest.raises(ArtifactError, match="index was built by hit-"):
        load_version(mixed)


def test_serve_artifact_refuses_a_live_version_of_another_model(two_versions: Path, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    """`serve ARTIFACT` pins the model: the live version (v000002, DSSM) is refused for HIT's artifact."""
    settings = Settings(store=f"local:{two_versions}", artifact=str(tiny_hit.artifact), poll_seconds=60)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["live_version"] is None
        reason = ready.json()["refused_versions"]["v000002"]
        assert f"is not the requested {tiny_hit.metrics['model_version']}" in reason
