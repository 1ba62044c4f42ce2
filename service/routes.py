"""HTTP routes: handlers translate between the wire format and the scorer."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.admission import Admission, deadline_from
from service.config import Settings
from service.errors import InvalidInput, NotReady, PayloadTooLarge, UnsupportedMediaType
from service.experiments import observe_arm
from service.follower import Follower
from service.metrics import metrics_payload, observe_result
from service.observability import record_stages
from service.schemas import ErrorResponse, PrerankResponse, RetrieveRequest, parse_prerank
from service.scorer import Scorer, ScoreResult

__all__ = ["router"]

router = APIRouter()

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=JSON_OPTIONS), status_code, headers, media_type="application/json")


def _body_schema(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "body is not JSON",
        504: "the request's deadline passed while it waited for a scoring slot",
        404: "unknown user with unknown_user=reject",
        413: "body too large",
        415: "content type is not application/json",
        422: "a field is invalid (the message names it)",
        503: "no version loaded yet, or over capacity (Retry-After: 1)",
    }.items()
}


@router.post(
    "/prerank",
    response_model=PrerankResponse,
    responses=_ERRORS,
    openapi_extra=_body_schema("PrerankRequest"),
    summary="Rank candidate ads for one user by eCPM",
)
async def prerank(request: Request) -> Response:
    """Runs the user tower once, scores every known candidate and returns them by eCPM.

    Per-stage timings are returned in the `Server-Timing` header.
    """
    settings: Settings = request.app.state.settings
    scorer: Scorer = request.app.state.scorer
    async with _admitted(request, settings):  # sheds (503) or expires (504) before any work
        body = await _body(request, settings)
        t0, started_ns = time.perf_counter(), time.time_ns()
        parsed = parse_prerank(body)
        parse_ms = (time.perf_counter() - t0) * 1e3
        n = len(parsed.candidates.ids)
        if n > settings.max_candidates:
            raise InvalidInput(
                ("body", "candidates", "ad_ids"), f"{n} candidates exceeds the limit of {settings.max_candidates}"
            )
        result = await run_in_threadpool(scorer.prerank, parsed)
    result.timings_ms["parse"] = parse_ms
    observe_result(result.timings_ms, n, len(result.unknown_ad_ids), result.user_known, result.pctr)
    if result.arm is not None:
        observe_arm(result)
    shadow = scorer.shadow
    if shadow is not None:
        shadow.offer(parsed, result)  # never blocks: queued for the candidate, or dropped
    record_stages(request.app.state.tracing, started_ns, result.timings_ms)
    return _scored(result, parsed.request_id)


@router.post(
    "/retrieve",
    response_model=PrerankResponse,
    responses=_ERRORS,
    openapi_extra=_body_schema("RetrieveRequest"),
    summary="Retrieve the top-k ads of the whole corpus for one user, ranked by eCPM",
)
async def retrieve(request: Request) -> Response:
    """Searches the FAISS index of ad heads with each user head, rescores the union exactly with
    the model, keeps the top_k by model score and returns them by eCPM with the stored bids."""
    settings: Settings = request.app.state.settings
    async with _admitted(request, settings):
        body = await _body(request, settings)
        started_ns = time.time_ns()
        parsed = RetrieveRequest.model_validate_json(body)
        result = await run_in_threadpool(request.app.state.scorer.retrieve, parsed)
    record_stages(request.app.state.tracing, started_ns, result.timings_ms)
    return _scored(result, parsed.request_id)


def _admitted(request: Request, settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    """A scoring slot for this request, within its deadline (service.admission)."""
    admission: Admission = request.app.state.admission
    return admission.slot(deadline_from(request.headers.get("x-request-timeout-ms"), settings.request_timeout_ms))


async def _body(request: Request, settings: Settings) -> bytes:
    """The raw body after content-type and size checks (parsed by pydantic straight from bytes)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        raise UnsupportedMediaType(
            ("header", "content-type"), f"must be application/json, got {content_type or 'nothing'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise PayloadTooLarge(("body",), f"{declared} bytes exceeds the limit of {settings.max_body_bytes}")
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(("body",), f"{len(body)} bytes exceeds the limit of {settings.max_body_bytes}")
    return body


def _scored(result: ScoreResult, request_id: str | None) -> Response:
    timing = ", ".join(f"{k};dur={v:.3f}" for k, v in result.timings_ms.items())
    return json_response(result.payload(request_id), headers={"Server-Timing": timing})


@router.get(
    "/sample",
    summary="Random ad and user ids of the live version (for load tests)",
    responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def sample(
    request: Request,
    ads: Annotated[int, Query(ge=1, le=1_000_000, description="how many ad ids")] = 1000,
    users: Annotated[int, Query(ge=1, le=100_000, description="how many user ids")] = 100,
) -> Response:
    """Up to `ads` ad ids and `users` user ids of the live index, sampled without replacement."""
    version = request.app.state.scorer.live
    if version is None:
        raise NotReady("version", "no model/index version is loaded")
    rng = np.random.default_rng()
    ad_ids = version.live_ids
    picked_ads = rng.choice(ad_ids, size=min(ads, len(ad_ids)), replace=False)
    store = request.app.state.scorer.users
    if version.user_codec is not None and store is not None:  # per-request user store: sample Redis
        picked = await run_in_threadpool(store.sample, version.version, version.user_buckets, users)
        return json_response({"ad_ids": picked_ads, "user_ids": picked})
    user_ids = version.index.user_ids
    picked_users = rng.choice(len(user_ids), size=min(users, len(user_ids)), replace=False)
    return json_response({"ad_ids": picked_ads, "user_ids": [user_ids[i] for i in picked_users]})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, media_type=content_type)


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: a model and index version is loaded", responses={503: {}})
async def readyz(request: Request) -> Response:
    follower: Follower = request.app.state.follower
    status = follower.status.as_dict()
    if request.app.state.scorer.live is None:
        status["status"] = "not_ready"
    elif not status["follower_alive"]:  # serving, but would never see another version
        status["status"] = "follower_stopped"
    elif not status["store_ok"] or status["follow_error"] or status["store_history_lost"]:  # serving from memory
        status["status"] = "degraded"
    else:
        status["status"] = "ready"
    return json_response(status, 200 if status["status"] in ("ready", "degraded") else 503)
