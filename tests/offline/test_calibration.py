"""pCTR calibration: fitting, the artifact round trip, served = offline, down-sampling correction, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.artifact import ArtifactError, load_artifact
from models.calibration import Calibrator
from offline.calibrate import fit_calibrator
from offline.data.synthetic import make_synthetic
from offline.export import export
from offline.metrics import ece, gauc, logloss
from offline.train import TrainConfig, predict_logits, train
from service.app import create_app
from service.config import Settings


def test_ece_and_gauc_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.1, 0.9, 0.7])
    # two bins used (15 bins): [0.0667, 0.133) holds 0.1, 0.1 (mean label 0, mean p 0.1) and the
    # 0.6-0.93 bins hold 0.7 (label 1) and 0.9 (label 1): |0-0.1|*0.5 + |1-0.7|*0.25 + |1-0.9|*0.25
    assert ece(labels, probs) == pytest.approx(0.05 + 0.075 + 0.025)
    users = np.array(["a", "a", "a", "b", "b", "c"])
    y = np.array([1, 0, 0, 1, 0, 1])
    p = np.array([0.9, 0.5, 0.95, 0.2, 0.8, 0.3])
    # user a: AUC 0.5 (one of two negatives ranked below the positive), 3 rows; b: AUC 0, 2 rows;
    # c has no negative and is left out
    assert gauc(users, y, p) == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
    with pytest.raises(ValueError, match="both a click"):
        gauc(np.array(["a"]), np.array([1]), np.array([0.5]))


def test_fitting_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 40_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)  # true p = sigmoid(0.5 z - 1)
    platt = fit_calibrator(z, y, "platt")
    assert platt.a == pytest.approx(0.5, abs=0.03) and platt.b == pytest.approx(-1.0, abs=0.05)
    auto = fit_calibrator(z, y, "auto")
    assert auto.method in ("platt", "isotonic") and set(auto.fit["cross_fitted_logloss"]) == {
        "identity",
        "platt",
        "isotonic",
    }
    raw = 1 / (1 + np.exp(-z))
    assert logloss(y, auto.probabilities(z)) < logloss(y, raw) - 0.05
    assert ece(y, auto.probabilities(z)) < 0.02 < ece(y, raw)
    iso = fit_calibrator(z, y, "isotonic")
    probs = iso.probabilities(np.sort(z))
    assert np.all(np.diff(probs) >= 0) and probs.min() > 0 and probs.max() < 1


def test_calibrator_round_trips_through_the_artifact_and_serving_applies_it_exactly(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=2, batch_size=128, lr=3e-3, progress=False, calibration="platt")
    result = train(tiny, "dssm", {"temperature": 5.0}, cfg, tmp_path / "art")
    assert result.metrics["calibration"] == "platt" and (tmp_path / "art" / "calibration.json").exists()
    bundle = load_artifact(tmp_path / "art")
    assert bundle.calibrator.method == "platt" and bundle.calibrator.a != 1.0
    assert bundle.meta["calibration_sha256"] and result.metrics["model_version"] == bundle.version
    export(tmp_path / "art", tiny, f"local:{tmp_path / 'store'}")
    ads = [int(a) for a in tiny.ad_ids[:50]]
    with TestClient(create_app(Settings(store=f"local:{tmp_path / 'store'}", poll_seconds=60))) as client:
        body = client.post("/prerank", json={"user": {"id": "7"}, "candidates": {"ad_ids": ads}}).json()
    user_row = tiny.user_keys.index("7")
    ad_rows = np.array([int(np.flatnonzero(tiny.ad_ids == a)[0]) for a in ads])
    feats = tiny.users.take(np.full(len(ad_rows), user_row))
    feats.update(tiny.ads.take(ad_rows))
    with torch.no_grad():
        logits = bundle.model(feats).numpy()
    offline = dict(zip(ads, bundle.calibrator.probabilities(logits), strict=True))
    np.testing.assert_allclose(body["pctr"], [offline[a] for a in body["ad_ids"]], atol=1e-6, rtol=0)
    uncalibrated = dict(zip(ads, 1 / (1 + np.exp(-logits)), strict=True))
    assert max(abs(p - uncalibrated[a]) for a, p in zip(body["ad_ids"], body["pctr"], strict=True)) > 1e-3


def test_a_tampered_calibration_is_refused(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=1, batch_size=256, progress=False, calibration="platt")
    train(tiny, "dssm", {"temperature": 5.0}, cfg, tmp_path / "art")
    path = tmp_path / "art" / "calibration.json"
    data = json.loads(path.read_text())
    data["a"] = 3.0
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"calibration\.json"):
        load_artifact(tmp_path / "art")
    with pytest.raises(ValueError, match="unknown calibration keys"):
        Calibrator.from_dict({"method": "platt", "nope": 1})


def test_negative_down_sampling_is_corrected_back_to_the_base_rate(tmp_path: Path) -> None:
    data = make_synthetic(n_users=300, n_ads=120, n_rows=20_000, seed=4)
    base = float(data.test.labels.mean())
    cfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, progress=False, negative_rate=0.25, seed=1)
    result = train(data, "lr", {}, cfg, tmp_path / "lr")  # calibration "none": only the offset log(0.25)
    m = result.metrics
    assert m["calibration"] == "identity" and m["negative_rate"] == 0.25
    raw_mean = float(1 / (1 + np.exp(-predict_logits(result.model, data.test))).mean())
    assert raw_mean > 1.5 * base  # trained on 4x fewer negatives, the raw model over-predicts
    assert m["calibrated_test_mean_pctr"] == pytest.approx(base, rel=0.15)  # the correction recovers it
    assert load_artifact(tmp_path / "lr").calibrator.offset == pytest.approx(np.log(0.25))


def test_revenue_at_k_and_ranking_consistency_hand_computed() -> None:
    from offline.metrics import ranking_consistency, revenue_at_k, revenue_ratio_at_k

    bids = np.array([1.0, 2.0, 0.5, 4.0])
    clicks = np.array([1.0, 0.0, 1.0, 1.0])
    ecpm = np.array([0.9, 0.8, 0.1, 0.3])  # ranks 0, 1, 3, 2
    assert revenue_at_k(bids, clicks, ecpm, 2) == 1.0  # ad 0 (1 x 1) + ad 1 (2 x 0)
    assert revenue_at_k(bids, clicks, ecpm, 3) == 5.0  # + ad 3 (4 x 1)
    # oracle top 2 by bid x click: ad 3 (4) and ad 0 (1) -> 5
    assert revenue_ratio_at_k(bids, clicks, ecpm, 2) == pytest.approx(1.0 / 5.0)
    ranker = np.array([0.1, 0.2, 0.9, 0.8])  # the ranking stage's top 2: ads 2, 3
    assert ranking_consistency(ranker, ecpm, 2, 2) == 0.0
    assert ranking_consistency(ranker, ecpm, 2, 3) == 0.5  # the pre-ranker's top 3 (0, 1, 3) keeps ad 3
    assert ranking_consistency(ranker, ecpm, 2, 4) == 1.0
    with pytest.raises(ValueError, match="must be >="):
        ranking_consistency(ranker, ecpm, 3, 2)


def test_served_pctr_histogram_and_the_paper_protocol_warning(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from prometheus_client.parser import text_string_to_metric_families

    data = replace(tiny, protocol="paper")  # as a MovieLens paper-protocol model records itself
    train(data, "lr", {}, TrainConfig(epochs=1, batch_size=256, progress=False), tmp_path / "art")
    export(tmp_path / "art", data, f"local:{tmp_path / 'store'}")
    with TestClient(create_app(Settings(store=f"local:{tmp_path / 'store'}", poll_seconds=60))) as client:

        def served() -> float:
            text = client.get("/metrics").text
            return next(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "prerank_pctr_count"
            )

        before = served()
        client.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": list(range(30))}})
        client.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2, 3]}})
        assert served() - before == 10 + 3  # the 10 best-ranked of the first request, all 3 of the second
        ready = client.get("/readyz").json()
    assert ready["live_protocol"] == "paper" and "own label" in ready["warning"]
