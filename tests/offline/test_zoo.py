"""The accuracy-table runner: trains missing runs, reuses existing ones, reports means and costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.provenance import machine
from offline.zoo import _train_one, reusable, zoo_summary
from prerank.cli import main


def test_zoo_trains_resumes_and_reports(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["zoo", "--dataset", "synthetic", "--models", "dssm", "fit", "--protocols", "paper", "--seeds", "1", "2"]
    argv += ["--epochs", "1", "--jobs", "1", "--runs", str(runs), "--out", str(out)]
    assert main(argv) == 0
    metrics = sorted(runs.glob("*/*/metrics.json"))
    assert len(metrics) == 4
    stamp = {p: p.stat().st_mtime_ns for p in metrics}
    assert main(argv) == 0  # resumes: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in metrics} == stamp
    # a job whose run another zoo process finished meanwhile is not trained again
    fit_run = runs / "paper" / "fit-s1"
    again = _train_one("synthetic", None, "paper", "fit", 1, 1, str(fit_run))
    assert again["test_auc"] == json.loads((fit_run / "metrics.json").read_text())["test_auc"]
    assert {p: p.stat().st_mtime_ns for p in metrics} == stamp

    fit_aucs = [json.loads(p.read_text())["test_auc"] for p in metrics if p.parent.name.startswith("fit")]
    rows = {r["model"]: r for r in zoo_summary(out / "runs")}
    assert sorted(p.name for p in (out / "runs" / "paper").iterdir()) == [
        "dssm-s1.json",
        "dssm-s2.json",
        "evaluate-s1.json",  # seed 1's business metrics
        "fit-s1.json",
        "fit-s2.json",
    ]
    # the committed copies alone let a fresh clone resume: nothing is retrained without runs/
    import shutil

    shutil.rmtree(runs)
    assert main(argv) == 0 and not runs.exists()
    assert rows["fit"]["auc_mean"] == pytest.approx(sum(fit_aucs) / 2)
    assert rows["fit"]["seeds"] == [1, 2] and rows["dssm"]["rela_impr_pct"] == pytest.approx(0.0)
    assert rows["fit"]["ints_per_ad"] == 1 and rows["fit"]["floats_per_ad"] == 4 * 16
    assert rows["dssm"]["floats_per_ad"] == 32 and rows["dssm"]["ints_per_ad"] == 0
    assert rows["fit"]["user_params"] > rows["fit"]["candidate_params"] > 0
    assert rows["fit"]["machines"] == [machine()]  # each run records where it trained
    assert rows["fit"]["evaluated_seeds"] == [1] and rows["fit"]["consistency"] is None  # no DCN to agree with
    assert rows["fit"]["gauc"] is not None and rows["dssm"]["revenue_at_10"] is not None
    md = (out / "zoo.md").read_text()
    assert "| synthetic | fit | prerank | 2 |" in md and (out / "zoo.png").stat().st_size > 0
    assert json.loads((out / "zoo.json").read_text())["rows"][0]["data_sha256"]


def test_zoo_evaluates_seed_one_and_trains_the_distilled_variant(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["zoo", "--dataset", "synthetic", "--models", "hit", "dcn", "--protocols", "paper", "--seeds", "1"]
    assert main([*argv, "--epochs", "1", "--jobs", "2", "--runs", str(runs), "--out", str(out)]) == 0
    distilled = json.loads((runs / "paper" / "hit-distill-s1" / "metrics.json").read_text())
    assert distilled["variant"] == "hit-distill" and distilled["model"] == "hit"
    assert distilled["train_config"]["distill_from"] == str(runs / "paper" / "dcn-s1")
    assert distilled["calibration"] in ("identity", "platt", "isotonic")  # the CLI's calibrator
    evaluation = json.loads((out / "runs" / "paper" / "evaluate-s1.json").read_text())
    assert set(evaluation["rows"]) == {"hit", "dcn", "hit-distill"} and evaluation["reference"] == "dcn"
    rows = {r["model"]: r for r in zoo_summary(out / "runs")}
    assert rows["dcn"]["consistency"] == 1.0  # the reference keeps its own top 10
    assert rows["hit-distill"]["distilled_from"] == "dcn" and rows["hit-distill"]["seeds"] == [1]
    for row in rows.values():
        assert row["evaluated_seeds"] == [1]
        assert 0 < row["revenue_at_10"] <= 1 + 1e-9 and 0 <= row["ece"] < 0.2 and 0.3 < row["gauc"] < 1
        assert row["ece"] == evaluation["rows"][row["model"]]["ece"]
    md = (out / "zoo.md").read_text()
    assert "| synthetic | hit-distill | prerank | 1 |" in md and "consistency with DCN" in md
    assert (out / "reliability.png").stat().st_size > 0
    # the evaluation is done: neither runs nor evaluation are redone
    stamp = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}
    assert main([*argv, "--epochs", "1", "--runs", str(runs), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == stamp


def test_zoo_rejects_unknown_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--dataset", "synthetic", "--models", "nope", "--runs", str(tmp_path)]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cap", "ran", "asked", "reused"),
    [
        (10, 10, 10, True),  # same cap
        (10, 6, 40, True),  # stopped early at 6: a cap of 40 trains the same run
        (10, 10, 40, False),  # hit its cap of 10: it might have gone on improving
        (40, 19, 40, True),
        (40, 19, 10, False),  # a cap of 10 would have stopped it at 10, with another best epoch
        (40, 8, 10, True),
    ],
)
def test_runs_are_reused_only_when_the_cap_cannot_change_them(cap: int, ran: int, asked: int, reused: bool) -> None:
    assert reusable({"train_config": {"epochs": cap}, "epochs": ran}, asked) is reused
