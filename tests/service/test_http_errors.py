"""Every 4xx the API returns has FastAPI's error shape and lists every problem, not only the first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.errors import InvalidInput, NotReady, Problem, ServiceError
from service.http_errors import STATUS, status_of
from service.schemas import ErrorResponse

TOKEN = {"authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    settings = Settings(
        store=f"local:{store}", max_candidates=50, max_body_bytes=4096, poll_seconds=60, admin_token="s3cret"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _problems(r) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    body = ErrorResponse.model_validate(r.json())  # {"detail": [{"loc", "msg", "type"}, ...]}
    return [item.model_dump() for item in body.detail]


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "loc", "kind"),
    [
        ("post", "/prerank", {"content": b"{oops", "headers": JSON}, 400, ["body"], "json_invalid"),
        ("post", "/admin/reload", {}, 401, ["header", "authorization"], "missing_credentials"),
        (
            "post",
            "/admin/reload",
            {"headers": {"authorization": "Bearer nope"}},
            403,
            ["header", "authorization"],
            "wrong_credentials",
        ),
        (
            "post",
            "/prerank",
            {"json": {"user": {"id": "nobody"}, "candidates": {"ad_ids": [1]}, "unknown_user": "reject"}},
            404,
            ["body", "user", "id"],
            "unknown_user",
        ),
        (
            "post",
            "/admin/pin",
            {"json": {"version": "v000099"}, "headers": TOKEN},
            409,
            ["body", "version"],
            "version_unavailable",
        ),
        (
            "post",
            "/prerank",
            {"content": b'{"user": {}, "candidates": {"ad_ids": [' + b"1," * 3000 + b"1]}}", "headers": JSON},
            413,
            ["body"],
            "payload_too_large",
        ),
        (
            "post",
            "/prerank",
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            ["header", "content-type"],
            "unsupported_media_type",
        ),
        (
            "post",
            "/prerank",
            {"json": {"user": {"id": "1"}, "candidates": {"ad_ids": list(range(51))}}},
            422,
            ["body", "candidates", "ad_ids"],
            "value_error",
        ),
        (
            "post",
            "/admin/pin",
            {"json": {"version": "latest"}, "headers": TOKEN},
            422,
            ["body", "version"],
            "string_pattern_mismatch",
        ),
        ("get", "/sample", {"params": {"ads": 0}}, 422, ["query", "ads"], "greater_than_equal"),
    ],
)
def test_every_4xx_has_the_fastapi_error_shape(  # type: ignore[no-untyped-def]
    client: TestClient,
    method: str,
    path: str,
    kwargs: dict,
    status: int,
    loc: list,
    kind: str,  # type: ignore[type-arg]
) -> None:
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    problems = _problems(r)
    assert problems[0]["loc"] == loc and problems[0]["type"] == kind and problems[0]["msg"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_each_out_of_range_ad_id_is_named_by_its_position(client: TestClient) -> None:
    # ids are parsed as a plain int list and checked vectorised; a bad one falls back to
    # per-element validation, so each error names its element as pydantic's constraints would
    content = b'{"user": {"id": "1"}, "candidates": {"ad_ids": [5, -3, 7, 9223372036854775808, 2]}}'
    problems = _problems(client.post("/prerank", content=content, headers=JSON))
    assert [(p["loc"], p["type"]) for p in problems] == [
        (["body", "candidates", "ad_ids", 1], "greater_than_equal"),
        (["body", "candidates", "ad_ids", 3], "less_than_equal"),
    ]
    ok = b'{"user": {"id": "1"}, "candidates": {"ad_ids": [5, 9223372036854775807]}}'
    assert client.post("/prerank", content=ok, headers=JSON).status_code == 200


def test_every_problem_is_reported_not_only_the_first(client: TestClient) -> None:
    body = {
        "user": {"id": "x" * 65, "features": {"height": 1, "segment": [1]}},
        "candidates": {"ad_ids": [-1]},
        "top_k": 0,
    }
    problems = _problems(client.post("/prerank", json=body))
    locs = {tuple(p["loc"]) for p in problems}
    assert {("body", "user", "id"), ("body", "candidates", "ad_ids", 0), ("body", "top_k")} <= locs
    # feature problems come from the scorer, all of them at once
    body = {"user": {"features": {"height": 1, "weight": 2, "segment": [1]}}, "candidates": {"ad_ids": [1]}}
    r = client.post("/prerank", json=body)
    assert r.status_code == 422
    ordered = [tuple(p["loc"]) for p in _problems(r)]
    assert ordered == [
        ("body", "user", "features", "height"),
        ("body", "user", "features", "weight"),
        ("body", "user", "features", "segment"),
    ]


def test_503_before_a_version_is_loaded(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{tmp_path}", poll_seconds=60))) as c:
        r = c.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1]}})
    assert r.status_code == 503 and _problems(r)[0] == {
        "loc": ["version"],
        "msg": "no model/index version is loaded",
        "type": "not_ready",
    }


def test_domain_errors_carry_no_http_status() -> None:
    """The status lives in one table in service/http_errors.py, not on the errors."""
    import service.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, ServiceError) and cls is not ServiceError:
            assert not hasattr(cls, "status") and status_of(cls("x", "y")) == STATUS[cls], name
    err = InvalidInput.of(
        [Problem(("body", "a"), "bad", "value_error"), Problem(("body", "b"), "worse", "value_error")]
    )
    assert len(err.problems) == 2 and status_of(err) == 422 and status_of(NotReady("v", "m")) == 503


def test_framework_errors_share_the_shape(client: TestClient) -> None:
    r = client.post("/admin/pin", content=b"\xff", headers={**JSON, **TOKEN})
    assert r.status_code == 400 and _problems(r)[0]["loc"] == ["body"]
    r = client.get("/no/such/route")
    assert r.status_code == 404 and _problems(r)[0]["type"] == "not_found"
    r = client.get("/prerank")
    assert r.status_code == 405 and _problems(r)[0]["type"] == "method_not_allowed"
