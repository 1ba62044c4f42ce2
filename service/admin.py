"""Admin routes (reload, pin, unpin), guarded by a bearer token from the settings."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from models.artifact import ArtifactError
from service.config import Settings
from service.errors import (
    AdminDisabled,
    MissingCredentials,
    NeedsBroker,
    StoreDown,
    VersionUnavailable,
    WrongCredentials,
)
from service.follower import Follower
from service.schemas import AdId, ErrorResponse
from service.store import RedisStore
from storage.deltas import set_paused
from storage.experiments import Experiment, ShadowConfig

__all__ = ["router"]


def require_admin(request: Request) -> None:
    """403 when admin is disabled or the token is wrong; 401 when it is missing."""
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise AdminDisabled(("header", "authorization"), "admin operations are disabled (set PRERANK_ADMIN_TOKEN)")
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise MissingCredentials(("header", "authorization"), "missing 'Authorization: Bearer <token>' header")
    token = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), token):
        raise WrongCredentials(("header", "authorization"), "invalid admin token")


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "body is not JSON"},
    401: {"model": ErrorResponse, "description": "no bearer token"},
    403: {"model": ErrorResponse, "description": "wrong token, or admin disabled"},
    409: {"model": ErrorResponse, "description": "the version cannot be served, or the store is not Redis"},
    422: {"model": ErrorResponse, "description": "invalid body (the message names the field)"},
}
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], tags=["admin"], responses=_ADMIN_ERRORS)


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(..., pattern=r"^v\d{1,20}$", description="published index version to serve, e.g. v000003")


def _follower(request: Request) -> Follower:
    follower: Follower = request.app.state.follower
    return follower


@router.post("/reload", summary="Check the store's live pointer now")
async def reload(request: Request) -> dict[str, Any]:
    swapped = await _follower(request).check()
    return {"swapped": swapped, **_follower(request).status.as_dict()}


@router.post("/pin", summary="Serve one version and stop following the store (rollback on this replica)")
async def pin(request: Request, body: PinRequest) -> dict[str, Any]:
    try:
        await _follower(request).pin(body.version)
    except (ArtifactError, OSError, ValueError) as exc:
        raise VersionUnavailable(("body", "version"), f"cannot serve {body.version}: {exc}") from None
    return _follower(request).status.as_dict()


@router.post("/unpin", summary="Follow the store's live pointer again")
async def unpin(request: Request) -> dict[str, Any]:
    await _follower(request).unpin()
    return _follower(request).status.as_dict()


class AdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ad_ids: list[AdId] = Field(..., min_length=1, max_length=100_000, description="ad ids to pause or resume")


async def _set_paused(request: Request, body: AdsRequest, paused: bool) -> dict[str, Any]:
    follower = _follower(request)
    store = follower.store
    if not isinstance(store, RedisStore):
        raise NeedsBroker(("body", "ad_ids"), "pausing ads needs a redis:// store, so that every replica sees it")
    import redis

    try:
        seq = await run_in_threadpool(set_paused, store.client, store.keys, body.ad_ids, paused)
    except redis.RedisError as exc:  # nothing was changed
        raise StoreDown(("store",), f"the store did not take the change: {exc}") from None
    await follower.check()  # this replica applies it now; the others on the events channel
    return {"delta_seq": seq, "applied_here": follower.status.delta_seq >= seq, **follower.status.as_dict()}


@router.post("/ads/pause", summary="Stop ranking ads on every replica (budget out); returns the change number")
async def pause_ads(request: Request, body: AdsRequest) -> dict[str, Any]:
    return await _set_paused(request, body, True)


@router.post("/ads/resume", summary="Rank paused ads again on every replica")
async def resume_ads(request: Request, body: AdsRequest) -> dict[str, Any]:
    return await _set_paused(request, body, False)


def _needed_bytes(follower: Follower, config: Experiment | ShadowConfig) -> int:
    """Bytes of the live version plus what `config` names; 409 for a version the store lacks."""
    versions = {a.version for a in config.arms} if isinstance(config, Experiment) else {config.version}
    live = follower.status.live_version
    total = 0
    for version in sorted(versions - {"live"}) + ([live] if live else []):
        try:
            total += follower.store.version_bytes(version)
        except ArtifactError as exc:
            raise VersionUnavailable(("body", "version"), str(exc)) from None
    return total


async def _set_config(request: Request, config: Experiment | ShadowConfig) -> dict[str, Any]:
    import redis

    follower = _follower(request)
    try:
        needed = await run_in_threadpool(_needed_bytes, follower, config)
        budget = follower.memory_budget_bytes
        if budget and needed > budget:
            raise VersionUnavailable(
                ("body",),
                f"needs {needed / 2**20:.0f} MiB with the live version, over the budget of {budget / 2**20:.0f} MiB",
            )
        await run_in_threadpool(follower.store.set_config, config)
    except (redis.RedisError, ConnectionError) as exc:
        raise StoreDown(("store",), f"the store did not take the config: {exc}") from None
    await follower.check()
    return follower.status.as_dict()


async def _clear(request: Request, kind: str) -> dict[str, Any]:
    import redis

    follower = _follower(request)
    try:
        await run_in_threadpool(follower.store.clear_config, kind)
    except (redis.RedisError, ConnectionError) as exc:
        raise StoreDown(("store",), f"the store did not take the change: {exc}") from None
    await follower.check()
    return follower.status.as_dict()


@router.post("/experiment", summary="Start (or replace) an A/B experiment on every replica")
async def start_experiment(request: Request, body: Experiment) -> dict[str, Any]:
    return await _set_config(request, body)


@router.post("/experiment/end", summary="End the experiment (its arms' versions are freed)")
async def end_experiment(request: Request) -> dict[str, Any]:
    return await _clear(request, "experiment")


@router.post("/shadow", summary="Score a sample of live requests with a candidate version, off the response path")
async def start_shadow(request: Request, body: ShadowConfig) -> dict[str, Any]:
    return await _set_config(request, body)


@router.post("/shadow/end", summary="Stop shadow scoring")
async def end_shadow(request: Request) -> dict[str, Any]:
    return await _clear(request, "shadow")
