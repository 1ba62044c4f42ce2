"""The follower: a crashed check or a dead follow loop is visible in /readyz, never silent."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import wait_for


def test_a_crashing_check_shows_in_readyz_and_the_loop_goes_on(store: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=0.05))) as client:
        follower = client.app.state.follower  # type: ignore[attr-defined]
        assert client.get("/readyz").json()["status"] == "ready"
        real = follower.store.current
        follower.store.current = lambda: (_ for _ in ()).throw(KeyError("bug in current()"))
        assert wait_for(lambda: client.get("/readyz").json()["follow_error"] is not None)
        body = client.get("/readyz").json()
        assert body["status"] == "degraded" and "KeyError" in body["follow_error"] and body["follower_alive"]
        follower.store.current = real  # the loop survived: the next check clears the error
        assert wait_for(lambda: client.get("/readyz").json()["status"] == "ready")


def test_a_dead_follow_loop_makes_readyz_fail(store: Path) -> None:
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        follower = client.app.state.follower  # type: ignore[attr-defined]

        async def dies() -> None:
            raise RuntimeError("follow loop crashed")

        async def start() -> None:
            follower.watch(asyncio.ensure_future(dies()))

        client.portal.call(start)  # type: ignore[union-attr]
        assert wait_for(lambda: client.get("/readyz").status_code == 503)
        body = client.get("/readyz").json()
        assert body["status"] == "follower_stopped" and not body["follower_alive"]
        assert body["follower_stopped"] == "RuntimeError: follow loop crashed"
        # the version it had keeps serving
        r = client.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": [1, 2]}})
        assert r.status_code == 200


def test_startup_objects_are_frozen_out_of_the_collectors_view(store: Path) -> None:
    gc.unfreeze()
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        # the imports and the first version: a full collection would walk every one of them
        assert gc.get_freeze_count() > 50_000
