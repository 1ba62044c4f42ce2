"""Business metrics of artifacts: the oracle bounds them, and the job writes its table and plot."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from offline.evaluate import candidate_sets, evaluate_artifacts, reliability
from prerank.cli import main


def test_reliability_bins_are_equal_count_and_ordered() -> None:
    probs = np.linspace(0.01, 0.99, 1000)
    labels = (np.random.default_rng(0).random(1000) < probs).astype(float)
    curve = reliability(labels, probs, bins=10)
    assert [c["n"] for c in curve] == [100] * 10
    assert all(a["predicted"] < b["predicted"] for a, b in itertools.pairwise(curve))
    assert abs(curve[-1]["observed"] - curve[-1]["predicted"]) < 0.1  # calibrated by construction


def test_metrics_of_trained_models_against_the_oracle(tiny, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    result = evaluate_artifacts(
        {"hit": tiny_hit.artifact, "dssm": tiny_dssm.artifact}, tiny, reference="hit", n_users=40, n_candidates=100
    )
    assert 0.5 < result["bayes_auc"] <= 1.0
    for name, row in result["rows"].items():
        assert row["auc"] <= result["bayes_auc"] + 0.02, name  # nothing beats the true probabilities
        assert 0 < row["revenue_at_k"] <= 1.0 + 1e-9 and 0 <= row["ece"] < 0.5 and 0.4 < row["gauc"] < 1.0
        assert 0 <= row["consistency"] <= 1.0
    assert result["rows"]["hit"]["consistency"] == 1.0  # the reference agrees with itself
    # the oracle's own ranking is revenue@k's ceiling: a model is at or below it
    assert result["rows"]["hit"]["revenue_at_k"] > 0.3


def test_candidate_sets_on_logged_data_are_each_users_test_ads_then_unlogged_ones(tiny) -> None:  # type: ignore[no-untyped-def]
    logged = dataclasses.replace(tiny, oracle=None)
    test = logged.test
    users, candidates, truth, ads = candidate_sets(logged, np.random.default_rng(0), n_users=25, n_candidates=60)
    assert ads is test.ads and candidates.shape == truth.shape == (25, 60) and len(set(users)) == 25
    for i, u in enumerate(users):
        mine = np.flatnonzero(test.user_rows == u)
        assert test.labels[mine].max() == 1.0  # users with a click
        seen = sorted(set(test.ad_rows[mine]))  # an ad shown twice is one candidate, clicked if either was
        clicked = [float(test.labels[mine][test.ad_rows[mine] == a].max()) for a in seen]
        n = len(seen)
        assert list(candidates[i, :n]) == seen and list(truth[i, :n]) == clicked
        assert not set(candidates[i, n:]) & set(seen) and (truth[i, n:] == 0).all()
        assert len(set(candidates[i])) == 60 and set(candidates[i]) <= set(test.ad_rows)


def test_business_metrics_on_logged_data(tiny, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    logged = dataclasses.replace(tiny, oracle=None)
    artifacts = {"hit": tiny_hit.artifact, "dssm": tiny_dssm.artifact}
    result = evaluate_artifacts(artifacts, logged, reference="hit", n_users=30, n_candidates=80)
    assert "bayes_auc" not in result and result["bids"] == "the data's bids"  # tiny's test ads are its snapshot
    assert result["clicks"].startswith("test labels") and result["n_candidates"] == 80
    for row in result["rows"].values():
        assert 0 < row["revenue_at_k"] <= 1 + 1e-9 and 0 <= row["consistency"] <= 1
    assert result["rows"]["hit"]["consistency"] == 1.0
    flat = dataclasses.replace(logged, ad_bids=np.ones_like(logged.ad_bids))
    assert evaluate_artifacts(artifacts, flat, n_users=5, n_candidates=80)["bids"] == "simulated lognormal(0, 0.5)"


def test_the_evaluate_job_writes_table_json_and_plot(tiny_hit, tiny_dssm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the CLI's synthetic dataset is not tiny's: train nothing, only check the user errors first
    argv = ["evaluate", f"hit={tiny_hit.artifact}", "--reference", "dcn", "--out", str(tmp_path)]
    assert main(argv) == 2  # unknown reference
    assert main(["evaluate", "hit=/nonexistent", "--out", str(tmp_path)]) == 2
    assert main(["evaluate", "nonsense", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("model", ["dssm"])
def test_the_evaluate_job_end_to_end(model: str, tmp_path: Path) -> None:
    art = tmp_path / model
    train = ["train", "--model", model, "--epochs", "1", "--out", str(art), "--no-progress", "--threads", "1"]
    assert main([*train, "--model-config", '{"temperature": 5}']) == 0
    out = tmp_path / "eval"
    argv = ["evaluate", f"{model}={art}", "--reference", model, "--users", "20", "--candidates", "50"]
    assert main([*argv, "--out", str(out), "--threads", "1"]) == 0
    result = json.loads((out / "evaluate.json").read_text())
    assert "bayes_auc" in result and result["rows"][model]["consistency"] == 1.0
    assert "revenue@10" in (out / "evaluate.md").read_text() and (out / "reliability.png").stat().st_size > 0
