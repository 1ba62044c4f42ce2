"""The app in-process (TestClient runs the real lifespan against a real published store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.schemas import PrerankResponse
from tests.conftest import detail_text


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    app = create_app(Settings(store=f"local:{store}", max_candidates=500, max_body_bytes=20_000, poll_seconds=60))
    with TestClient(app) as c:
        yield c


def _offline_scores(tiny, model, user_key: str, ad_ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    user_row = tiny.user_keys.index(user_key)
    ad_rows = np.array([int(np.flatnonzero(tiny.ad_ids == a)[0]) for a in ad_ids])
    feats = tiny.users.take(np.full(len(ad_rows), user_row))
    feats.update(tiny.ads.take(ad_rows))
    with torch.no_grad():
        return torch.sigmoid(model.eval()(feats)).numpy()


def test_prerank_matches_offline_scores_and_sorts_by_ecpm(client: TestClient, tiny, tiny_hit) -> None:  # type: ignore[no-untyped-def]
    ads = [int(a) for a in tiny.ad_ids[:60]]
    bids = [float(b) for b in np.linspace(0.5, 3.0, 60)]
    r = client.post("/prerank", json={"user": {"id": "7"}, "candidates": {"ad_ids": ads, "bids": bids}})
    assert r.status_code == 200, r.text
    body = PrerankResponse.model_validate(r.json())
    assert body.user_known and body.unknown_ad_ids == [] and len(body.ad_ids) == 60
    expected = dict(zip(ads, _offline_scores(tiny, tiny_hit.model, "7", ads), strict=True))
    np.testing.assert_allclose(body.pctr, [expected[a] for a in body.ad_ids], atol=1e-5, rtol=0)
    bid_of = dict(zip(ads, bids, strict=True))
    np.testing.assert_allclose(body.ecpm, [expected[a] * bid_of[a] for a in body.ad_ids], atol=1e-5, rtol=1e-5)
    assert body.ecpm == sorted(body.ecpm, reverse=True)
    assert body.model_version == tiny_hit.metrics["model_version"] and body.index_version == "v000001"
    assert "score;dur=" in r.headers["server-timing"]


def test_top_k_unknown_ads_and_stored_bids(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    ads = [int(a) for a in tiny.ad_ids[:30]] + [10**12, 10**12 + 1]
    r = client.post("/prerank", json={"user": {"id": "3"}, "candidates": {"ad_ids": ads}, "top_k": 5})
    body = r.json()
    assert r.status_code == 200 and len(body["ad_ids"]) == 5
    assert body["unknown_ad_ids"] == [10**12, 10**12 + 1]
    full = client.post("/prerank", json={"user": {"id": "3"}, "candidates": {"ad_ids": ads}}).json()
    assert full["ad_ids"][:5] == body["ad_ids"]  # partial sort agrees with the full sort
    stored = dict(zip(tiny.ad_ids.tolist(), tiny.ad_bids.tolist(), strict=True))
    np.testing.assert_allclose(
        full["ecpm"], [p * stored[a] for p, a in zip(full["pctr"], full["ad_ids"], strict=True)], rtol=1e-5
    )


def test_raw_features_override_and_unknown_user(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    ads = [int(a) for a in tiny.ad_ids[:20]]
    stored = client.post("/prerank", json={"user": {"id": "5"}, "candidates": {"ad_ids": ads}}).json()
    seg = tiny.vocabs["segment"].tokens[(tiny.users.sparse["segment"][5] % 12)]  # a different segment
    changed = client.post(
        "/prerank", json={"user": {"id": "5", "features": {"segment": seg}}, "candidates": {"ad_ids": ads}}
    ).json()
    assert changed["pctr"] != stored["pctr"]
    cold = client.post("/prerank", json={"user": {"id": "nobody"}, "candidates": {"ad_ids": ads}})
    assert cold.status_code == 200 and cold.json()["user_known"] is False
    by_features = client.post(
        "/prerank",
        json={
            "user": {"features": {"segment": "1", "age_bucket": "2", "preferred_categories": [1, 4]}},
            "candidates": {"ad_ids": ads},
        },
    )
    assert by_features.status_code == 200 and by_features.json()["user_known"] is True


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"user": {"id": "1"}, "candidates": {"ad_ids": []}}, 422, "candidates.ad_ids"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": ["x"]}}, 422, "candidates.ad_ids.0"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": [1, 1]}}, 422, "duplicate"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2], "bids": [1.0]}}, 422, "candidates.bids"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": [1], "bids": [-1.0]}}, 422, "candidates.bids[0]"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": list(range(501))}}, 422, "exceeds the limit of 500"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": [1]}, "top_k": 0}, 422, "top_k"),
        ({"candidates": {"ad_ids": [1]}}, 422, "user"),
        ({"user": {"id": "1"}, "candidates": {"ad_ids": [1]}, "extra": 1}, 422, "extra"),
        ({"user": {"id": "x" * 65}, "candidates": {"ad_ids": [1]}}, 422, "user.id"),
        ({"user": {"features": {"segment": [1, 2]}}, "candidates": {"ad_ids": [1]}}, 422, "user.features.segment"),
        ({"user": {"features": {"height": 3}}, "candidates": {"ad_ids": [1]}}, 422, "user.features.height"),
        ({"user": {"id": "nobody"}, "candidates": {"ad_ids": [1]}, "unknown_user": "reject"}, 404, "user.id"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(client: TestClient, body: dict, status: int, needle: str) -> None:
    r = client.post("/prerank", json=body)
    assert r.status_code == status, r.text
    assert needle in detail_text(r)


def test_malformed_bodies(client: TestClient) -> None:
    r = client.post("/prerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in detail_text(r)
    r = client.post("/prerank", content=b"user=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    big = b'{"user": {"id": "1"}, "candidates": {"ad_ids": [' + b"1," * 20_000 + b"1]}}"
    r = client.post("/prerank", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in detail_text(r)


def test_health_readiness_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["live_version"] == "v000001"
    spec = client.get("/openapi.json").json()
    req = spec["components"]["schemas"]["PrerankRequest"]
    assert spec["paths"]["/prerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PrerankRequest"
    )
    assert all("description" in p for p in req["properties"].values())


def test_not_ready_without_a_published_version(tmp_path: Path) -> None:
    app = create_app(Settings(store=f"local:{tmp_path}", poll_seconds=60))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 503
        r = c.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1]}})
        assert r.status_code == 503


def test_retrieve_exact_equals_brute_force_and_ann_recall(client: TestClient, store: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from tools.recall import measure_recall

    exact = client.post("/retrieve", json={"user": {"id": "9"}, "top_k": 20, "exact": True}).json()
    model = client.app.state.scorer.live.bundle.model  # type: ignore[attr-defined]
    version = client.app.state.scorer.live  # type: ignore[attr-defined]
    with torch.no_grad():
        user = model.encode_user(version.index.users.take(np.array([version.user_rows["9"]])))
        logits = model.score(user, version.rows.dequantized()).numpy()
    best = set(version.index.ad_ids[np.argsort(-logits)[:20]].tolist())
    assert set(exact["ad_ids"]) == best and exact["ecpm"] == sorted(exact["ecpm"], reverse=True)
    approx = client.post("/retrieve", json={"user": {"id": "9"}, "top_k": 20}).json()
    assert len(set(approx["ad_ids"]) & best) >= 18
    report = measure_recall(f"local:{store}", [10, 50], n_users=30)
    assert all(r["recall_mean"] >= 0.9 for r in report["results"])
    bad = client.post("/retrieve", json={"user": {"id": "9"}, "top_k": 0})
    assert bad.status_code == 422 and "top_k" in detail_text(bad)


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }


def sample_delta(before: dict, after: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """How much one sample moved between two `_samples` snapshots (absent: 0)."""
    key = (name, tuple(sorted(labels.items())))
    return float(after.get(key, 0.0) - before.get(key, 0.0))


def test_metrics_move_with_the_requests(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    before = _samples(client)
    ads = [int(a) for a in tiny.ad_ids[:10]] + [10**15]
    assert client.post("/prerank", json={"user": {"id": "nobody"}, "candidates": {"ad_ids": ads}}).status_code == 200
    assert client.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": []}}).status_code == 422
    after = _samples(client)

    def delta(name: str, **labels: str) -> float:
        return sample_delta(before, after, name, **labels)

    assert delta("prerank_http_requests_total", route="/prerank", status="200") == 1
    assert delta("prerank_http_requests_total", route="/prerank", status="422") == 1
    assert delta("prerank_http_request_duration_seconds_count", route="/prerank", status="200") == 1
    assert delta("prerank_http_request_duration_seconds_bucket", route="/prerank", status="200", le="+Inf") == 1
    for stage in ("parse", "features", "user_tower", "gather", "score", "sort"):
        assert delta("prerank_stage_seconds_count", stage=stage) == 1, stage
        assert delta("prerank_stage_seconds_sum", stage=stage) > 0, stage
    assert delta("prerank_request_candidates_count") == 1 and delta("prerank_request_candidates_sum") == 11
    assert delta("prerank_unknown_ads_total") == 1 and delta("prerank_unknown_users_total") == 1
    # the gauge is per process, and other tests' apps share this one: this app's pair must be set to 1
    pair = ("prerank_live_version_info", (("index_version", "v000001"), ("model_version", tiny_model(client))))
    assert after[pair] == 1
    for name in ("prerank_version_swaps_total", "prerank_versions_refused_total", "prerank_store_errors_total"):
        assert (name, ()) in after, name


def tiny_model(client: TestClient) -> str:
    return str(client.get("/readyz").json()["live_model"])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user": {"id": "1"}, "candidates": {"ad_ids": [1], "bids": [NaN]}}',
        b'{"user": {"id": "1"}, "candidates": {"ad_ids": [1], "bids": [Infinity]}}',
        b'{"user": {"features": {"segment": "1", "age_bucket": NaN}}, "candidates": {"ad_ids": [1]}}',
    ],
)
def test_non_finite_numbers_are_refused(client: TestClient, raw: bytes) -> None:
    r = client.post("/prerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text


def _b64(values: list[float] | list[int], dtype: str) -> str:
    import base64

    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def test_base64_columns_rank_exactly_like_json_arrays(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    ads = [int(a) for a in tiny.ad_ids[:50]] + [10**12]  # one unknown id
    bids = [float(b) for b in np.linspace(0.25, 4.0, 51, dtype=np.float32)]
    lists = client.post("/prerank", json={"user": {"id": "3"}, "candidates": {"ad_ids": ads, "bids": bids}})
    packed = {"ad_ids": _b64(ads, "<i8"), "bids": _b64(bids, "<f4")}
    binary = client.post("/prerank", json={"user": {"id": "3"}, "candidates": packed, "top_k": 51})
    assert lists.status_code == binary.status_code == 200, binary.text
    a, b = lists.json(), binary.json()
    assert a["ad_ids"] == b["ad_ids"] and a["unknown_ad_ids"] == b["unknown_ad_ids"] == [10**12]
    np.testing.assert_allclose(a["ecpm"], b["ecpm"], rtol=1e-6)


def test_large_json_columns_take_the_column_decoder_and_rank_like_base64(client: TestClient, tiny) -> None:  # type: ignore[no-untyped-def]
    from service.schemas import FAST_MIN_IDS, _decoded_columns

    known = [int(a) for a in tiny.ad_ids[:200]]
    ads = known + [10**12 + i for i in range(FAST_MIN_IDS)]  # enough ids for the decoder; the rest unknown
    bids = [float(b) for b in np.linspace(0.25, 4.0, len(ads), dtype=np.float32)]
    body = {"user": {"id": "3"}, "candidates": {"ad_ids": ads, "bids": bids}, "top_k": 20}
    assert _decoded_columns(orjson.dumps(body)) is not None
    lists = client.post("/prerank", content=orjson.dumps(body), headers={"content-type": "application/json"})
    packed = {"ad_ids": _b64(ads, "<i8"), "bids": _b64(bids, "<f4")}
    binary = client.post("/prerank", json={**body, "candidates": packed})
    assert lists.status_code == binary.status_code == 200, lists.text
    a, b = lists.json(), binary.json()
    assert a["ad_ids"] == b["ad_ids"] and len(a["ad_ids"]) == 20 and a["unknown_ad_ids"] == b["unknown_ad_ids"]
    np.testing.assert_allclose(a["ecpm"], b["ecpm"], rtol=1e-6)
    dup = {**body, "candidates": {"ad_ids": [*ads[:-1], ads[0]]}}
    bad = client.post("/prerank", content=orjson.dumps(dup), headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "duplicate" in bad.text and "candidates" in bad.text


@pytest.mark.parametrize(
    ("candidates", "needle"),
    [
        ({"ad_ids": "not base64!"}, "candidates.ad_ids is a string but not valid base64"),
        ({"ad_ids": _b64([1, 2], "<i4")[:-4]}, "not a whole number of 8-byte values"),
        ({"ad_ids": _b64([1, -2], "<i8")}, "candidates.ad_ids[1] is negative"),
        ({"ad_ids": _b64([5, 5], "<i8")}, "duplicate"),
        ({"ad_ids": _b64([1, 2], "<i8"), "bids": _b64([1.0], "<f4")}, "candidates.bids has 1 values"),
        ({"ad_ids": _b64([1, 2], "<i8"), "bids": _b64([1.0, float("nan")], "<f4")}, "candidates.bids[1]"),
        ({"ad_ids": ""}, "candidates.ad_ids"),
    ],
)
def test_bad_base64_columns_name_the_field(client: TestClient, candidates: dict, needle: str) -> None:
    r = client.post("/prerank", json={"user": {"id": "1"}, "candidates": candidates})
    assert r.status_code == 422, r.text
    assert needle in detail_text(r)
