"""`prerank worlds` on a tiny size: worlds, runs, evaluation and the report, from one command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.data import load_dataset
from offline.train import rare_id_fields
from prerank.cli import main


def test_the_worlds_table_from_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["worlds", "--runs", str(runs), "--out", str(out), "--structures", "cross", "--models", "dssm", "dcn"]
    args += ["--model-config", 'dcn={"wide": "rare-ids"}']  # the recipe for long-tailed ids, resolved per world
    size = ["--users", "300", "--ads", "100", "--rows", "12000", "--seeds", "1", "2"]
    assert main([*args, *size]) == 0
    table = (out / "worlds.md").read_text()
    report = json.loads((out / "worlds.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"dssm", "dcn"} and all(r["seeds"] == [1, 2] for r in rows.values())
    ref = json.loads((runs / "cross" / "data" / "reference.json").read_text())
    for r in rows.values():
        assert r["bayes_auc"] == ref["bayes"]["auc"] and r["attainable_auc"] == ref["attainable"]["auc"]
        assert r["gap_to_attainable"] == pytest.approx(r["auc_mean"] - ref["attainable"]["auc"])
        assert 0 <= r["ece"] < 0.2 and 0 < r["revenue_at_10"] <= 1 and r["gauc"] is not None
    assert rows["dcn"]["consistency"] == pytest.approx(1.0)  # the reference keeps its own top 10
    rare = list(rare_id_fields(load_dataset(str(runs / "cross" / "data" / "cross.toml"))))
    assert rare and rows["dcn"]["model_config"]["wide"] == rare and rows["dssm"]["model_config"].get("wide") is None
    assert f'* cross / dcn: train `{{}}`, model `{{"wide": {json.dumps(rare)}}}`' in table
    assert "* cross / dssm: train `{}`, model `{}`" in table  # the defaults change nothing
    assert "| cross |" in table and "revenue@10" in table and (out / "worlds.png").stat().st_size > 10_000
    assert (out / "reliability.png").stat().st_size > 10_000
    assert len(list((out / "runs" / "cross").glob("*.json"))) == 1 + 4 + 2  # reference, runs, evaluations
    # a second call trains nothing and rebuilds the same table
    mtime = (runs / "cross" / "dcn-s1" / "metrics.json").stat().st_mtime
    assert main([*args, *size]) == 0
    assert (runs / "cross" / "dcn-s1" / "metrics.json").stat().st_mtime == mtime
    capsys.readouterr()


def test_tuned_configs_apply_over_the_base_model_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tuned: each (world, model) trains with its study's train config (epochs and calibration
    excepted) and its model config applied over --model-config."""
    runs, out, tuned = tmp_path / "runs", tmp_path / "out", tmp_path / "tune" / "cross-dcn"
    tuned.mkdir(parents=True)
    (tuned / "train_config.json").write_text(json.dumps({"lr": 0.004, "batch_size": 512, "epochs": 99}))
    (tuned / "model_config.json").write_text(json.dumps({"dropout": 0.05}))
    args = ["worlds", "--runs", str(runs), "--out", str(out), "--structures", "cross", "--models", "dcn"]
    args += ["--model-config", 'dcn={"wide": []}', "--tuned", str(tmp_path / "tune")]
    assert main([*args, "--users", "300", "--ads", "100", "--rows", "12000", "--seeds", "1"]) == 0
    metrics = json.loads((runs / "cross" / "dcn-s1" / "metrics.json").read_text())
    assert (metrics["train_config"]["lr"], metrics["train_config"]["batch_size"]) == (0.004, 512)
    assert metrics["train_config"]["epochs"] == 30  # the table's own cap, not the study's
    assert metrics["model_config"]["dropout"] == 0.05 and list(metrics["model_config"]["wide"]) == []
    # the report names the tuned run's own config, not the defaults (wide [] is the default)
    line = '* cross / dcn: train `{"batch_size": 512, "lr": 0.004}`, model `{"dropout": 0.05}`'
    assert line in (out / "worlds.md").read_text()
    capsys.readouterr()
