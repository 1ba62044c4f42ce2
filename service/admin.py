"""Admin routes (reload, pin, unpin), guarded by a bearer token from the settings."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from models.artifact import ArtifactError
from service.config import Settings
from service.errors import AdminDisabled, MissingCredentials, VersionUnavailable, WrongCredentials
from service.follower import Follower
from service.schemas import ErrorResponse

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
    409: {"model": ErrorResponse, "description": "the version cannot be served"},
    422: {"model": ErrorResponse, "description": "invalid body (the message names the field)"},
}
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], tags=["admin"], responses=_ADMIN_ERRORS)


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(..., pattern=r"^v\d{1,12}$", description="published index version to serve, e.g. v000003")


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
