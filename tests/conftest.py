"""Shared fixtures: a tiny synthetic dataset, a trained tiny HIT artifact and a published store."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from offline.data import Dataset, resolve_data_dir
from offline.data.synthetic import make_synthetic
from offline.export import export
from offline.train import TrainConfig, TrainResult, train
from tools.procs import free_port

#: The one data rule (offline.data.resolve_data_dir): $PRERANK_DATA_DIR/<dataset>, else ./data/<dataset>.
#: CI sets PRERANK_DATA_DIR to the shared data folder.
MOVIELENS = resolve_data_dir(None, "movielens-1m")
SHARED_DATA = MOVIELENS.parent

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny() -> Dataset:
    return make_synthetic(n_users=300, n_ads=120, n_rows=6000, seed=3)


@pytest.fixture(scope="session")
def tiny_hit(tiny: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("artifact") / "hit"
    return train(tiny, "hit", {}, TrainConfig(epochs=6, batch_size=128, lr=3e-3, patience=3, progress=False), out)


@pytest.fixture(scope="session")
def tiny_dssm(tiny: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("artifact") / "dssm"
    return train(
        tiny, "dssm", {"temperature": 5.0}, TrainConfig(epochs=4, batch_size=128, lr=3e-3, progress=False), out
    )


@pytest.fixture(scope="session")
def store(tiny: Dataset, tiny_hit: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    assert tiny_hit.artifact is not None
    export(tiny_hit.artifact, tiny, f"local:{root}")
    return root


@pytest.fixture
def movielens_dir() -> Path:
    if not (MOVIELENS / "users.dat").exists():
        pytest.skip(f"MovieLens-1M not found under {SHARED_DATA}")
    return MOVIELENS


class RedisServer:
    """A real redis-server on a free port in a temporary directory (nothing persisted)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def serve(
    store_url: str, poll: str = "5", extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """`prerank serve` in a subprocess on a free port; yields its URL once /readyz answers 200."""
    import httpx

    port = free_port()
    full_env = {**os.environ, "PRERANK_POLL_SECONDS": poll, "PRERANK_TORCH_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prerank", "serve", "--store", store_url, "--port", str(port), *extra_args],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail("server did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- No silent skips in CI ---------------------------------------------------------------------
#: Skips that are deliberate everywhere, CI included (substring of the skip reason -> why).
DELIBERATE_SKIPS = {
    "CUDA is not available": "CI machines have no GPU; the CUDA paths run where a device is lent",
}
_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason))


def unexpected_skips(skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The skips whose reason is not one of DELIBERATE_SKIPS."""
    return [(node, why) for node, why in skipped if not any(ok in why for ok in DELIBERATE_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true, a test that skips for a missing prerequisite (data, prometheus, a binary)
    fails the run: CI installs everything, so such a skip hides a broken setup."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    bad = unexpected_skips(_SKIPPED)
    if bad:
        print("\nCI=true: these tests skipped, and nothing in CI should skip them:", file=sys.stderr)
        for node, why in bad:
            print(f"  {node}: {why}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def detail_text(response: object) -> str:
    """Every problem of an error response as 'loc.path: msg' lines (FastAPI's error shape)."""
    detail = response.json()["detail"]  # type: ignore[attr-defined]
    assert isinstance(detail, list) and detail, detail
    return "\n".join(".".join(str(x) for x in item["loc"]) + ": " + item["msg"] for item in detail)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Polls `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
