from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.artifact import ArtifactError, load_index
from offline.data.synthetic import make_synthetic
from offline.export import export
from offline.metrics import auc, logloss, rela_impr
from offline.train import TrainConfig, load_baseline, train


def test_metrics_hand_computed() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    assert rela_impr(0.9048, 0.8697) == pytest.approx(9.49, abs=0.01)  # HIT Table 2 row
    with pytest.raises(ValueError):
        rela_impr(0.7, 0.5)


def test_training_learns_and_writes_a_self_describing_artifact(tiny, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    m = tiny_hit.metrics
    assert m["test_auc"] > 0.55  # synthetic clicks depend on features; chance is 0.5 (test std ~0.017)
    assert tiny_hit.history[-1]["train_loss"] < tiny_hit.history[0]["train_loss"]
    art = tiny_hit.artifact
    assert {p.name for p in art.iterdir()} == {
        "config.json",
        "schema.json",
        "vocab.json",
        "weights.safetensors",
        "meta.json",
        "metrics.json",
    }
    meta = json.loads((art / "meta.json").read_text())
    for key in ("seed", "protocol", "data_sha256", "code_version", "model_version", "test_auc", "train_config"):
        assert key in meta, key
    assert meta["data_sha256"] == tiny.checksum


def test_relaimpr_against_a_baseline(tiny, tiny_dssm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = load_baseline(tiny_dssm.artifact)
    r = train(tiny, "hit", {}, TrainConfig(epochs=1, batch_size=512, progress=False), tmp_path / "h", base)
    expected = rela_impr(r.metrics["test_auc"], base["test_auc"])
    assert r.metrics["rela_impr_pct"] == pytest.approx(expected)


def test_early_stopping_keeps_the_best_epoch(tiny) -> None:  # type: ignore[no-untyped-def]
    r = train(tiny, "dssm", {}, TrainConfig(epochs=30, batch_size=1024, lr=0.05, patience=1, progress=False))
    aucs = [h["valid_auc"] for h in r.history]
    assert len(aucs) < 30
    assert r.metrics["valid_auc"] == max(aucs) and r.metrics["best_epoch"] == aucs.index(max(aucs)) + 1


def test_export_publishes_and_failure_leaves_live_untouched(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    m1 = export(tiny_hit.artifact, tiny, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == m1["version"] == "v000001"
    index = load_index(root / "versions" / "v000001")
    assert (
        index.rows.vectors.shape == (len(tiny.ad_ids), 2, 16) and index.manifest["model_version"] == m1["model_version"]
    )
    other = make_synthetic(n_users=50, n_ads=10, n_rows=500, seed=1)  # different vocabularies
    with pytest.raises(ArtifactError, match="vocabulary"):
        export(tiny_hit.artifact, other, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == "v000001"
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001"]  # no partial version left


def test_export_write_error_leaves_no_partial_version(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    export(tiny_hit.artifact, tiny, f"local:{root}")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hit.artifact, broken)
    os.chmod(broken / "weights.safetensors", 0)  # unreadable: the copy into the store fails
    if os.access(broken / "weights.safetensors", os.R_OK):  # running as root: remove instead
        (broken / "weights.safetensors").unlink()
    with pytest.raises((OSError, ArtifactError)):
        export(broken, tiny, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == "v000001"
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001"]


def test_export_keeps_the_last_versions(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    for _ in range(4):
        export(tiny_hit.artifact, tiny, f"local:{root}", dtype="bfloat16", keep=2)
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000003", "v000004"]
    assert load_index(root / "versions" / "v000004").rows.vectors.dtype.is_floating_point


def test_bad_store_url() -> None:
    from storage import parse_store_url

    with pytest.raises(ValueError, match="local:DIR or redis"):
        parse_store_url("s3://bucket")


def test_quantized_auc_is_close_to_fp32(tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    from offline.quant import quantized_auc
    from offline.train import evaluate

    result = quantized_auc(tiny_hit.artifact, tiny)
    fp32 = result["dtypes"]["float32"]["auc"]
    assert fp32 == pytest.approx(evaluate(tiny_hit.model, tiny.test)["auc"], abs=1e-9)  # same as offline eval
    assert abs(result["dtypes"]["bfloat16"]["auc_change"]) < 0.01
    assert abs(result["dtypes"]["int8"]["auc_change"]) < 0.01


def test_concurrent_local_publishers_get_distinct_intact_versions(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    root = tmp_path / "store"
    results: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            results.append(export(tiny_hit.artifact, tiny, f"local:{root}")["version"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == ["v000001", "v000002", "v000003", "v000004"]
    for v in results:
        assert load_index(root / "versions" / v).manifest["version"] == v
    assert (root / "CURRENT").read_text().strip() in results
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".staging")]


def test_dropping_a_feature_removes_it_from_the_model(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prerank.cli import main

    ablated = tiny.without(["preferred_categories"])
    assert "preferred_categories" not in {f.name for f in ablated.schema.features}
    assert "category" in ablated.schema.vocab_sizes  # still used by the ad's category field
    result = train(ablated, "hit", {}, TrainConfig(epochs=1, batch_size=256, progress=False), tmp_path / "a")
    assert result.metrics["dropped_features"] == ["preferred_categories"]
    assert "user_tower.embedding.tables.preferred_categories.weight" not in result.model.state_dict()
    assert main(["train", "--drop-features", "nope", "--out", str(tmp_path / "b")]) == 2
