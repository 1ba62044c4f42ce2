"""FastAPI app factory: settings -> scorer + follower in the lifespan -> routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError

from models.artifact import load_artifact
from service.admin import router as admin_router
from service.config import Settings
from service.follower import Follower
from service.metrics import MetricsMiddleware
from service.routes import json_response, router
from service.schemas import PrerankRequest, RetrieveRequest
from service.scorer import NotReadyError, RequestError, Scorer
from service.store import open_store

__all__ = ["create_app"]

_UNION_TAGS = ("str", "int", "float", "bool", "none")


def _field_path(loc: Sequence[int | str]) -> str:
    """`candidates.ad_ids.0` from a pydantic error location, without union-branch tags such as
    `list[constrained-int]`."""
    parts = [
        p for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p or p.startswith("constrained")))
    ]
    return ".".join(str(p) for p in parts)


log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the service. Nothing is loaded until the lifespan starts."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        expected = load_artifact(Path(settings.artifact)).version if settings.artifact else None
        scorer = Scorer(settings.device)
        follower = Follower(open_store(settings.store), scorer, settings.device, expected)
        app.state.settings, app.state.scorer, app.state.follower = settings, scorer, follower
        await follower.check()
        task = asyncio.create_task(follower.run(settings.poll_seconds))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="HIT pre-ranking service",
        version="0.1.0",
        description="Scores recall candidates for one user with a two-tower model and returns them by eCPM.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(admin_router)
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        return json_response({"detail": str(exc)}, exc.status)

    @app.exception_handler(ValidationError)
    async def _body_error(_: Request, exc: ValidationError) -> Response:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return json_response({"detail": f"body is not valid JSON: {first['msg']}"}, 400)
        where = _field_path(first["loc"]) or "body"
        return json_response({"detail": f"{where}: {first['msg']}"}, 422)

    @app.exception_handler(NotReadyError)
    async def _not_ready(_: Request, exc: NotReadyError) -> Response:
        return json_response({"detail": str(exc)}, 503)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        where = _field_path(first["loc"])
        return json_response({"detail": f"{where}: {first['msg']}"}, 422)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for body_model in (PrerankRequest, RetrieveRequest):
                body_schema = body_model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body_schema.pop("$defs", {}))
                components[body_model.__name__] = body_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
