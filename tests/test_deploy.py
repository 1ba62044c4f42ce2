"""docker-compose.yml checked statically (no Docker engine here) and the locustfile run for real."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prerank import JOBS as COMMANDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _prerank_commands(service: dict) -> list[list[str]]:  # type: ignore[type-arg]
    cmd = service["command"]
    text = cmd[-1] if cmd[0] == "sh" else shlex.join(cmd)
    return [shlex.split(part.strip())[1:] for part in text.split("&&") if part.strip().startswith("prerank")]


def test_compose_services_healthchecks_and_order(compose) -> None:  # type: ignore[no-untyped-def]
    services = compose["services"]
    assert set(services) == {"redis", "publisher", "server", "ingest", "prometheus", "grafana", "locust"}
    for name in ("redis", "server"):
        assert services[name]["healthcheck"]["test"], name
    server = services["server"]
    assert server["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "publisher": {"condition": "service_completed_successfully"},
    }
    assert services["publisher"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert server["deploy"]["replicas"] >= 2 and "ports" not in server  # replicas share the compose network
    assert "/readyz" in " ".join(server["healthcheck"]["test"])
    assert services["redis"]["ports"] == ["6379:6379"] and services["prometheus"]["ports"] == ["9090:9090"]


def test_compose_commands_and_files_exist_in_the_project(compose) -> None:  # type: ignore[no-untyped-def]
    services = compose["services"]
    assert services["ingest"]["depends_on"]["publisher"]["condition"] == "service_completed_successfully"
    assert services["ingest"]["image"] == services["server"]["image"]  # the serve image carries the consumer
    for name in ("publisher", "server", "ingest"):
        for argv in _prerank_commands(services[name]):
            assert argv[0] in COMMANDS, (name, argv)
            assert any("redis://redis:6379" in a for a in argv if a.startswith("redis")) or argv[0] == "train"
    assert (ROOT / "Dockerfile").exists()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    sd = prometheus["scrape_configs"][0]["dns_sd_configs"][0]
    assert sd["names"] == ["server"] and sd["port"] == 8000
    assert services["locust"]["command"][1] == "loadtest/locustfile.py"
    assert (ROOT / "loadtest" / "locustfile.py").exists()


@pytest.mark.integration
def test_locust_headless_run_against_the_real_server(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from offline.export import export
    from tests.conftest import serve

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'store'}")
    with serve(f"local:{tmp_path / 'store'}") as url:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtest" / "locustfile.py"),
                "--headless",
                "-u",
                "2",
                "-r",
                "2",
                "-t",
                "4s",
                "--host",
                url,
                "--csv",
                str(tmp_path / "run"),
                "--only-summary",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10 and int(total["Failure Count"]) == 0


@pytest.mark.integration
def test_loadtest_runner_reports_percentiles_per_model(tiny, tiny_hit, tiny_dssm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from loadtest.run import main as run_main
    from offline.export import export

    export(tiny_hit.artifact, tiny, f"local:{tmp_path / 'hit'}")
    export(tiny_dssm.artifact, tiny, f"local:{tmp_path / 'dssm'}")
    out = tmp_path / "report"
    code = run_main(
        [
            "--target",
            f"hit=local:{tmp_path / 'hit'}",
            "--target",
            f"dssm=local:{tmp_path / 'dssm'}",
            "--candidates",
            "10",
            "100",
            "--users",
            "2",
            "--seconds",
            "3",
            "--encoding",
            "base64",
            "--ratio",
            "hit/dssm",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    import json

    report = json.loads((out / "report.json").read_text())
    for name in ("hit", "dssm"):
        steps = report["models"][name]
        assert [s["candidates"] for s in steps] == [10, 100]
        assert all(s["requests"] > 0 and s["failures"] == 0 and s["p50_ms"] <= s["p99_ms"] for s in steps)
        # percentiles come from every raw response time, not Locust's whole-ms rounding
        assert all(s["percentiles_from"] == "raw response times" for s in steps)
        raw = sorted(float(t) for t in (out / f"{name}-100_raw_ms.txt").read_text().split())
        assert len(raw) == steps[1]["timed_requests"] and any(t != round(t) for t in raw)
        # the reported percentiles are exactly those of the raw times (linear interpolation)
        assert steps[1]["p50_ms"] == pytest.approx(float(np.percentile(raw, 50)), rel=1e-9)
        assert steps[1]["p99_ms"] == pytest.approx(float(np.percentile(raw, 99)), rel=1e-9)
    assert report["encoding"] == "base64"
    assert "hit/dssm at 100 candidates: p99" in (out / "report.md").read_text() and (out / "latency.png").exists()


def test_images_are_multi_stage_non_root_and_the_serving_image_has_no_offline_stack(compose) -> None:  # type: ignore[no-untyped-def]
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {
        line.split(" AS ")[1].strip() for line in dockerfile.splitlines() if line.startswith("FROM ") and " AS " in line
    }
    assert stages == {"base", "serve", "offline"}
    serve = dockerfile.split("AS serve", 1)[1].split("FROM ", 1)[0]
    assert "COPY offline" not in serve and '".[serve]"' in serve and "USER prerank" in serve
    offline = dockerfile.split("AS offline", 1)[1]
    assert "USER prerank" in offline and "-c constraints.txt" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "results"} <= set(ignored)
    services = compose["services"]
    assert services["server"]["build"]["target"] == "serve" and services["publisher"]["build"]["target"] == "offline"
    assert services["locust"]["image"].startswith("locustio/locust:")  # the stock image runs our locustfile


def test_the_locustfile_imports_only_locust_and_the_standard_library() -> None:
    import ast

    tree = ast.parse((ROOT / "loadtest" / "locustfile.py").read_text())
    roots = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not (isinstance(node, ast.ImportFrom) and node.level)
    }
    assert roots - {"__future__", "locust"} <= set(sys.stdlib_module_names), roots


def test_percentile_is_linear_interpolation() -> None:
    from loadtest.run import _percentile

    values = [1.0, 2.0, 4.0, 8.0, 100.0]
    assert _percentile(values, 50) == 4.0 and _percentile(values, 0) == 1.0 and _percentile(values, 100) == 100.0
    assert _percentile(values, 90) == pytest.approx(8.0 + 0.6 * 92.0)  # between the 4th and 5th value
    assert _percentile([5.0], 99) == 5.0


VALIDATION_CASES = [
    ({"ad_ids": [1, 2], "pctr": [0.5, 0.4], "ecpm": [0.5, 0.4], "unknown_ad_ids": []}, None),
    ({"ad_ids": [1], "pctr": [0.5], "ecpm": [0.5], "unknown_ad_ids": []}, "expected 2 ranked ads, got 1"),
    ({"ad_ids": [1, 9], "pctr": [0.5, 0.4], "ecpm": [0.5, 0.4], "unknown_ad_ids": []}, "not a candidate"),
    ({"ad_ids": [1, 2], "pctr": [0.4, 0.5], "ecpm": [0.4, 0.5], "unknown_ad_ids": []}, "eCPM not sorted"),
    ({"ad_ids": [1, 2], "pctr": [1.5, 0.4], "ecpm": [0.5, 0.4], "unknown_ad_ids": []}, "pCTR outside [0, 1]"),
    ({"ad_ids": [1], "pctr": [0.5], "ecpm": [0.5], "unknown_ad_ids": [2, 3]}, None),
]


def test_locust_validation_rejects_bad_bodies() -> None:
    """The locustfile's response check, fed good and bad bodies (in a subprocess: importing
    locust monkey-patches the standard library, which pytest's process must not get)."""
    import json

    code = (
        "import json, sys; from loadtest.locustfile import validate; "
        "print(json.dumps([validate(b, {1, 2, 3}, 2) for b, _ in json.load(sys.stdin)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(VALIDATION_CASES),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for (_, problem), got in zip(VALIDATION_CASES, found, strict=True):
        assert (got is None) if problem is None else (got is not None and problem in got), (problem, got)
