from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.metrics import auc, logloss, rela_impr
from offline.train import TrainConfig, evaluate, load_baseline, train


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
    # the tiny DSSM's own test AUC sits near 0.5 and on either side of it by CPU (0.478 on one), so
    # the baseline is its metrics file with a test AUC set above 0.5
    metrics = json.loads((tiny_dssm.artifact / "metrics.json").read_text())
    (tmp_path / "base.json").write_text(json.dumps({**metrics, "test_auc": 0.6}))
    base = load_baseline(tmp_path / "base.json")
    r = train(tiny, "hit", {}, TrainConfig(epochs=1, batch_size=512, progress=False), tmp_path / "h", base)
    expected = rela_impr(r.metrics["test_auc"], 0.6)
    assert r.metrics["rela_impr_pct"] == pytest.approx(expected)
    assert r.metrics["baseline"] == {"model": metrics.get("model"), "test_auc": 0.6}
    (tmp_path / "bad.json").write_text(json.dumps({**metrics, "test_auc": 0.48}))
    with pytest.raises(ValueError, match=r"not above 0\.5"):  # an undefined RelaImpr fails before training
        load_baseline(tmp_path / "bad.json")


def test_early_stopping_keeps_the_best_epoch(tiny) -> None:  # type: ignore[no-untyped-def]
    r = train(tiny, "dssm", {}, TrainConfig(epochs=30, batch_size=1024, lr=0.05, patience=1, progress=False))
    aucs = [h["valid_auc"] for h in r.history]
    assert len(aucs) < 30 and r.metrics["best_epoch"] < len(aucs)  # the last epoch is not the best
    assert r.metrics["valid_auc"] == max(aucs) and r.metrics["best_epoch"] == aucs.index(max(aucs)) + 1
    # the returned model is the best epoch's, not the last one's
    assert evaluate(r.model, tiny.valid)["auc"] == pytest.approx(max(aucs), abs=1e-9)
    assert evaluate(r.model, tiny.valid)["auc"] != pytest.approx(aucs[-1], abs=1e-6)


def test_quantized_auc_is_close_to_fp32(tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    from offline.quant import quantized_auc
    from offline.train import evaluate

    result = quantized_auc(tiny_hit.artifact, tiny)
    fp32 = result["dtypes"]["float32"]["auc"]
    assert fp32 == pytest.approx(evaluate(tiny_hit.model, tiny.test)["auc"], abs=1e-9)  # same as offline eval
    assert abs(result["dtypes"]["bfloat16"]["auc_change"]) < 0.01
    assert abs(result["dtypes"]["int8"]["auc_change"]) < 0.01


def test_dropping_a_feature_removes_it_from_the_model(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prerank.cli import main

    ablated = tiny.without(["preferred_categories"])
    assert "preferred_categories" not in {f.name for f in ablated.schema.features}
    assert "category" in ablated.schema.vocab_sizes  # still used by the ad's category field
    result = train(ablated, "hit", {}, TrainConfig(epochs=1, batch_size=256, progress=False), tmp_path / "a")
    assert result.metrics["dropped_features"] == ["preferred_categories"]
    assert "user_tower.embedding.tables.preferred_categories.weight" not in result.model.state_dict()
    assert main(["train", "--drop-features", "nope", "--out", str(tmp_path / "b")]) == 2
