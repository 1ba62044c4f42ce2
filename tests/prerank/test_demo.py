"""`prerank demo`, the main job, end to end on the synthetic set (it starts a real server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prerank.demo import pick_dataset
from tools.procs import free_port

pytestmark = pytest.mark.integration


def test_demo_trains_publishes_serves_and_answers(tmp_path: Path) -> None:
    port = free_port()
    argv = ["demo", "--dataset", "synthetic", "--epochs", "1", "--workdir", str(tmp_path), "--port", str(port)]
    proc = subprocess.run(
        [sys.executable, "-m", "prerank", *argv, "--exit", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[1/4] loading synthetic: as asked (--dataset)" in out
    assert "[3/4] published index v000001" in out and f"server ready at http://127.0.0.1:{port}" in out
    samples = [line for line in out.splitlines() if line.strip().startswith("user=")]
    assert len(samples) == 3 and "known_user=False" in samples[2] and "unknown_ads=[999999999]" in samples[1]
    assert f"prerank serve --store local:{tmp_path / 'store'} --port {port}" in out
    assert (tmp_path / "store" / "CURRENT").read_text().strip() == "v000001"


def test_demo_picks_data_by_the_one_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRERANK_DATA_DIR", str(tmp_path))
    dataset, why = pick_dataset("auto", None)
    assert dataset == "synthetic" and str(tmp_path / "movielens-1m") in why
    ml = tmp_path / "movielens-1m"
    ml.mkdir()
    for name in ("users.dat", "movies.dat", "ratings.dat"):
        (ml / name).write_text("")
    assert pick_dataset("auto", None) == ("movielens-1m", f"found in {ml}")
    assert pick_dataset("auto", ml)[0] == "movielens-1m"
    with pytest.raises(Exception, match="no MovieLens-1M files there"):
        pick_dataset("auto", tmp_path / "empty")
