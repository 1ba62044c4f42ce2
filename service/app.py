"""FastAPI app factory: settings -> scorer + follower in the lifespan -> routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from models.artifact import load_artifact
from service.admin import router as admin_router
from service.admission import Admission
from service.batching import UserTowerBatcher
from service.config import Settings
from service.follower import Follower
from service.http_errors import install_error_handlers
from service.metrics import mark_process_dead
from service.observability import ObservabilityMiddleware, Tracing
from service.routes import router
from service.schemas import PrerankRequest, RetrieveRequest
from service.scorer import Scorer
from service.store import open_store
from service.users import UserStore
from storage import parse_store_url

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle package, so /docs works without a network."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(swagger_ui_path)


def create_app(settings: Settings | None = None, tracing: Tracing | None = None) -> FastAPI:
    """Builds the service. Nothing is loaded until the lifespan starts.

    Args:
        settings: the server's settings (default: from the environment).
        tracing: a ready `Tracing` (tests pass one with an in-memory exporter); default: built
            from `settings.tracing`.
    """
    settings = settings or Settings()
    tracing = tracing or Tracing(settings.tracing)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        expected = load_artifact(Path(settings.artifact)).version if settings.artifact else None
        users = None
        if parse_store_url(settings.store).scheme == "redis":
            users = UserStore(
                settings.store,
                timeout=settings.online_timeout_ms / 1000,
                cache_size=settings.user_cache_size,
                online=settings.online_users,
            )
        batcher = UserTowerBatcher(settings.user_batch, settings.user_batch_window_us) if settings.user_batch else None
        scorer = Scorer(settings.device, users, batcher)
        follower = Follower(
            open_store(settings.store), scorer, settings.device, expected, settings.memory_budget_mb * 2**20
        )
        app.state.settings, app.state.scorer, app.state.follower = settings, scorer, follower
        app.state.tracing = tracing
        app.state.admission = Admission(settings.max_concurrency, settings.max_queue, settings.max_queue_ms)
        await follower.check()
        # The ~200k objects the imports (torch, pydantic, FastAPI) and the first version made live as
        # long as the process: collected once before any request, then out of the collector's view, a
        # full collection no longer stops every request for ~100-140 ms (measured at 50k ads; later
        # versions stay collectable).
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(follower.run(settings.poll_seconds))
        follower.watch(task)
        grpc_server = None
        if settings.grpc_address:
            from service.grpc_server import GrpcServer

            grpc_server = GrpcServer(scorer, app.state.admission, settings.max_candidates, settings.grpc_address)
            await grpc_server.start()
        app.state.grpc = grpc_server
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if batcher is not None:
                batcher.close()
            tracing.shutdown()
            mark_process_dead()

    assets = _swagger_assets()
    app = FastAPI(
        title="HIT pre-ranking service",
        version="0.1.0",
        description="Scores recall candidates for one user with a two-tower model and returns them by eCPM.",
        lifespan=lifespan,
        docs_url=None if assets else "/docs",
    )
    app.include_router(router)
    app.include_router(admin_router)
    app.add_middleware(ObservabilityMiddleware, tracing=tracing, log_sample_rate=settings.log_sample_rate)
    install_error_handlers(app)

    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Response:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url or "/openapi.json",
                title=f"{app.title} - docs",
                swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                swagger_css_url="/docs-assets/swagger-ui.css",
                swagger_favicon_url="/docs-assets/favicon-32x32.png",
            )

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
