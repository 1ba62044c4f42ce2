"""A/B experiments and shadow scoring: the hash split, arms on a replica, swaps under load, budget."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from offline.export import export
from prerank.cli import main
from service.app import create_app
from service.config import Settings
from service.experiments import ArmSet, Shadow
from service.schemas import PrerankRequest
from service.scorer import Scorer
from service.store import load_version
from storage.experiments import Experiment, ShadowConfig, assign_arm
from tests.conftest import detail_text, serve, wait_for

AUTH = {"Authorization": "Bearer s3cret"}


def test_the_hash_split_is_even_sticky_and_salted() -> None:
    users = [f"u{i}" for i in range(100_000)]
    for shares in ((0.5, 0.5), (0.2, 0.3, 0.5)):
        arms = [{"name": f"a{i}", "version": "live", "share": s} for i, s in enumerate(shares)]
        experiment = Experiment.model_validate({"name": "e", "salt": "s1", "arms": arms})
        counts = Counter(assign_arm(experiment, u) for u in users)
        for i, share in enumerate(shares):
            assert abs(counts[i] / len(users) - share) < 0.01, (shares, counts)
    experiment = Experiment.model_validate({"name": "e", "salt": "s1", "arms": arms})
    again = ArmSet.of(experiment, (None, None, None))
    assert all(again.pick(u)[0] == f"a{assign_arm(experiment, u)}" for u in users[:5000])  # sticky
    resalted = Experiment.model_validate({"name": "e", "salt": "s2", "arms": arms})
    moved = sum(assign_arm(experiment, u) != assign_arm(resalted, u) for u in users[:20_000]) / 20_000
    assert 0.5 < moved < 0.7  # a new salt reshuffles (1 - sum of squared shares = 0.62 expected)
    two = [{"name": "a", "version": "live", "share": 0.5}, {"name": "b", "version": "v000001", "share": 0.4}]
    with pytest.raises(ValueError, match="sum to 1"):
        Experiment.model_validate({"name": "e", "salt": "s", "arms": two})
    with pytest.raises(ValueError, match="unique"):
        Experiment.model_validate({"name": "e", "salt": "s", "arms": [two[0], two[0]]})
    with pytest.raises(ValueError, match="'live' or a published version"):
        Experiment.model_validate(
            {"name": "e", "salt": "s", "arms": [two[0], {**two[1], "version": "v1x", "share": 0.5}]}
        )


@pytest.fixture
def two_models(tiny, tiny_hit, tiny_dssm, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    export(tiny_hit.artifact, tiny, f"local:{root}")  # v000001: HIT
    export(tiny_dssm.artifact, tiny, f"local:{root}")  # v000002: DSSM, live
    return root


def test_arms_score_their_users_and_ending_frees_the_versions(two_models: Path, tiny, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    hit, dssm = tiny_hit.metrics["model_version"], tiny_dssm.metrics["model_version"]
    settings = Settings(store=f"local:{two_models}", poll_seconds=60, admin_token="s3cret")
    ads = tiny.ad_ids[:20].tolist()
    with TestClient(create_app(settings)) as c:
        config = {
            "name": "hit-vs-dssm",
            "salt": "2026-12",
            "arms": [
                {"name": "control", "version": "live", "share": 0.5},
                {"name": "hit", "version": "v000001", "share": 0.5},
            ],
        }
        started = c.post("/admin/experiment", json=config, headers=AUTH)
        assert started.status_code == 200, started.text
        assert started.json()["experiment"]["arms"]["hit"]["version"] == "v000001" and started.json()["held_bytes"] > 0
        seen = {}
        for user in range(1, 80):
            body = c.post("/prerank", json={"user": {"id": str(user)}, "candidates": {"ad_ids": ads}}).json()
            seen[str(user)] = (body["arm"], body["model_version"], body["experiment"])
        assert {(a, m) for a, m, _ in seen.values()} == {("control", dssm), ("hit", hit)}
        assert {e for _, _, e in seen.values()} == {"hit-vs-dssm"}
        again = c.post("/prerank", json={"user": {"id": "7"}, "candidates": {"ad_ids": ads}}).json()
        assert again["arm"] == seen["7"][0]  # sticky
        metrics = c.get("/metrics").text
        assert 'prerank_experiment_requests_total{arm="hit",experiment="hit-vs-dssm"}' in metrics
        follower = c.app.state.follower  # type: ignore[attr-defined]
        held = weakref.ref(follower._extras["v000001"])
        ended = c.post("/admin/experiment/end", headers=AUTH).json()
        assert ended["experiment"] is None and ended["held_bytes"] == 0
        gc.collect()
        assert held() is None  # nothing holds the arm's version any more
        body = c.post("/prerank", json={"user": {"id": "7"}, "candidates": {"ad_ids": ads}}).json()
        assert body["arm"] is None and body["model_version"] == dssm


def test_budget_and_unknown_versions_are_refused_with_the_reason(two_models: Path) -> None:
    settings = Settings(store=f"local:{two_models}", poll_seconds=60, admin_token="s3cret", memory_budget_mb=0)
    arms = [{"name": "a", "version": "live", "share": 0.5}, {"name": "b", "version": "v000009", "share": 0.5}]
    with TestClient(create_app(settings)) as c:
        missing = c.post("/admin/experiment", json={"name": "x", "salt": "s", "arms": arms}, headers=AUTH)
        assert missing.status_code == 409 and "v000009" in detail_text(missing)
        bad = c.post("/admin/experiment", json={"name": "x", "salt": "s", "arms": arms[:1]}, headers=AUTH)
        assert bad.status_code == 422 and "arms" in detail_text(bad)
        follower = c.app.state.follower  # type: ignore[attr-defined]
        follower.memory_budget_bytes = 1000  # far below two versions
        arms[1]["version"] = "v000001"
        over = c.post("/admin/experiment", json={"name": "x", "salt": "s", "arms": arms}, headers=AUTH)
        assert over.status_code == 409 and "budget" in detail_text(over)
        # set behind the API's back (e.g. by the CLI): the replica refuses it and says why
        assert main(["experiment", "start", "x", "--salt", "s", "--store", f"local:{two_models}",
                     "--arm", "a=live:0.5", "--arm", "b=v000001:0.5"]) == 0  # fmt: skip
        assert c.post("/admin/reload", headers=AUTH).json()["experiment_error"].startswith("not applied")
        assert c.post("/prerank", json={"user": {"id": "3"}, "candidates": {"ad_ids": [1, 2]}}).json()["arm"] is None
    assert main(["experiment", "start", "x", "--salt", "s", "--store", f"local:{two_models}",
                 "--arm", "a=live:0.5", "--arm", "b=v000042:0.5"]) == 2  # fmt: skip
    assert main(["experiment", "start", "x", "--store", f"local:{two_models}", "--arm", "a=live:1"]) == 2


def test_an_arm_swap_under_load_fails_no_request(two_models: Path, tiny, tiny_hit, tiny_dssm) -> None:  # type: ignore[no-untyped-def]
    store = f"local:{two_models}"
    hit, dssm = tiny_hit.metrics["model_version"], tiny_dssm.metrics["model_version"]
    assert main(["experiment", "start", "swap", "--salt", "s", "--store", store,
                 "--arm", "a=live:0.5", "--arm", "b=v000001:0.5"]) == 0  # fmt: skip
    failures: list[str] = []
    seen: list[tuple[str, str]] = []
    stop = threading.Event()
    with serve(store, poll="0.2") as url:

        def traffic() -> None:
            with httpx.Client(timeout=10) as client:
                i = 0
                while not stop.is_set():
                    body = {"user": {"id": str(i % 200)}, "candidates": {"ad_ids": tiny.ad_ids[:40].tolist()}}
                    r = client.post(url + "/prerank", json=body)
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append((r.json()["arm"], r.json()["model_version"]))
                    i += 1

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            assert wait_for(lambda: ("b", hit) in seen, timeout=10)
            # arm b moves to the live version (DSSM); arm a is untouched
            assert main(["experiment", "start", "swap", "--salt", "s", "--store", store,
                         "--arm", "a=live:0.5", "--arm", "b=v000002:0.5"]) == 0  # fmt: skip
            n = len(seen)
            assert wait_for(lambda: seen[n:].count(("b", dssm)) > 20, timeout=10)
            assert main(["experiment", "end", "--store", store]) == 0
            n = len(seen)
            assert wait_for(lambda: seen[n:].count((None, dssm)) > 20, timeout=10)  # type: ignore[arg-type]
        finally:
            stop.set()
            thread.join()
    assert failures == []
    assert ("a", hit) not in seen  # arm a always scored with the live version (DSSM)


def test_shadow_scores_off_the_response_path_and_drops_when_busy(store: Path, tiny, tiny_dssm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live = load_version(store / "versions" / "v000001")
    export(tiny_dssm.artifact, tiny, f"local:{tmp_path / 'c'}")
    candidate = load_version(tmp_path / "c" / "versions" / "v000001")
    scorer = Scorer()
    scorer.swap(live)
    request = PrerankRequest.model_validate({"user": {"id": "4"}, "candidates": {"ad_ids": tiny.ad_ids.tolist()}})
    result = scorer.prerank(request)
    from service.experiments import SHADOW_OVERLAP, SHADOW_REQUESTS

    def count(outcome: str) -> float:
        return float(SHADOW_REQUESTS.labels(outcome)._value.get())

    dropped, scored, overlaps = count("dropped"), count("scored"), SHADOW_OVERLAP._sum.get()  # type: ignore[attr-defined]
    shadow = Shadow(scorer, candidate, ShadowConfig(version="v000001", sample=1.0), queue_size=1)
    try:
        started = time.perf_counter()
        for _ in range(200):
            shadow.offer(request, result)  # never blocks, whatever the candidate's speed
        offered_ms = (time.perf_counter() - started) * 1e3
        assert wait_for(lambda: count("scored") > scored, timeout=10)
    finally:
        shadow.close()
    assert offered_ms < 50 and count("dropped") - dropped >= 150
    assert SHADOW_OVERLAP._sum.get() > overlaps  # the overlap with live was recorded  # type: ignore[attr-defined]


def test_shadow_through_the_admin_api(two_models: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(store=f"local:{two_models}", poll_seconds=60, admin_token="s3cret")
    with TestClient(create_app(settings)) as c:
        r = c.post("/admin/shadow", json={"version": "v000001", "sample": 1.0}, headers=AUTH)
        assert r.status_code == 200 and r.json()["shadow"] == {"version": "v000001", "sample": 1.0}
        for user in range(10):
            body = {"user": {"id": str(user)}, "candidates": {"ad_ids": tiny.ad_ids[:50].tolist()}}
            assert c.post("/prerank", json=body).status_code == 200
        assert wait_for(lambda: 'prerank_shadow_requests_total{outcome="scored"}' in c.get("/metrics").text)
        assert "prerank_shadow_topk_overlap_count" in c.get("/metrics").text
        assert c.post("/admin/shadow/end", headers=AUTH).json()["shadow"] is None
