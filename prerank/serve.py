"""`prerank serve`: start the HTTP service on a store.

Flags override the PRERANK_* environment (service.config.Settings). The settings are built and
checked here (store URL and reachability, artifact, port) before the server starts, then
`create_app(settings)` is served by uvicorn (the default) or granian (`--server granian`, a Rust
HTTP server running the same ASGI app). With `--workers N > 1`, or with granian (whose workers are
always processes of its own), each server process builds the app from the same settings passed
down in its environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prerank.job import UsageError, job_parser, run_job
from tools.procs import port_in_use

__all__ = ["main", "parser", "settings_from_args"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("serve", "Start the HTTP service on a store (flags override PRERANK_* variables).")
    p.add_argument("artifact", type=Path, nargs="?", help="optional: a model artifact the live version must match")
    p.add_argument("--store", help="local:DIR or redis://[:password@]host:port/db (default: $PRERANK_STORE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu or cuda (default: $PRERANK_DEVICE, else cpu)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default: $PRERANK_TORCH_THREADS, else 1)"
    )
    p.add_argument("--workers", type=int, default=1, help="server processes (metrics aggregate across them)")
    p.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="HTTP server for the ASGI app (default: uvicorn with uvloop and httptools; results/perf/servers)",
    )
    p.add_argument(
        "--grpc-port", type=int, default=None, help="also serve gRPC (prerank.v1.Prerank) on this port (default: off)"
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the environment with the given flags on top; checks the cheap things."""
    from service.config import Settings
    from storage import check_store

    overrides: dict[str, Any] = {}
    if args.store is not None:
        overrides["store"] = args.store
    if args.artifact is not None:
        overrides["artifact"] = str(args.artifact)
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["torch_threads"] = args.threads
    if args.grpc_port is not None:
        if args.workers > 1:
            raise UsageError("--grpc-port serves from one process; use --workers 1 (scale with replicas)")
        if port_in_use(args.grpc_port, args.host):
            raise UsageError(f"port {args.grpc_port} is already in use (--grpc-port)")
        overrides["grpc_address"] = f"{args.host}:{args.grpc_port}"
    settings = Settings(**overrides)
    if "store" not in overrides and "PRERANK_STORE" not in os.environ:
        raise UsageError("no store: pass --store local:DIR or redis://..., or set PRERANK_STORE")
    check_store(settings.store, must_exist=True)
    if settings.artifact is not None:
        from models.artifact import load_artifact

        load_artifact(Path(settings.artifact))
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {settings.device}: CUDA is not available on this machine")
    return settings


def _run(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if port_in_use(args.port, args.host):
        raise UsageError(f"port {args.port} on {args.host} is in use; pass --port")
    settings = settings_from_args(args)
    if settings.grpc_address and args.workers > 1:
        raise UsageError("gRPC (PRERANK_GRPC_ADDRESS) serves from one process; use --workers 1 (scale with replicas)")
    from service.observability import configure_logging

    configure_logging("DEBUG" if args.verbose else "INFO", settings.log_json)
    if args.server == "uvicorn" and args.workers == 1:
        import uvicorn

        from service.app import create_app

        uvicorn.run(create_app(settings), **_uvicorn_options(args))
        return
    # Server processes of their own: each rebuilds the app from the environment (Settings' own source).
    for name, value in settings.model_dump().items():
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            os.environ[f"PRERANK_{name.upper()}"] = str(secret() if secret else value)
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    made = None  # the metrics directory this run makes, and removes, when it needs one
    if args.workers > 1:  # metrics aggregate across the workers through files
        if given:  # files left by an earlier run would be aggregated with this one's
            shutil.rmtree(given, ignore_errors=True)
            Path(given).mkdir(parents=True)
        else:
            made = tempfile.mkdtemp(prefix="prerank-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = given or str(made)
    try:
        if args.server == "granian":
            _granian(args)
        else:
            import uvicorn

            uvicorn.run("prerank.serve:worker_app", factory=True, workers=args.workers, **_uvicorn_options(args))
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "timeout_graceful_shutdown": 30,
        "log_config": None,  # the root logger's JSON lines
        "access_log": False,  # our middleware logs requests as JSON lines
    }


def _granian(args: argparse.Namespace) -> None:
    """granian's ASGI interface on uvloop, one Rust runtime thread per worker process (the torch
    thread does the rest); its access log off (our middleware logs requests)."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "prerank.serve:worker_app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        runtime_threads=1,
        loop=Loops.uvloop,
        factory=True,
        log_enabled=False,
        workers_kill_timeout=30,
    ).serve()


def worker_app() -> Any:
    """The app of one `--workers N` process: settings and logging from the environment."""
    from service.app import create_app
    from service.config import Settings
    from service.observability import configure_logging

    settings = Settings()
    configure_logging(json_lines=settings.log_json)
    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("serve", parser(), _run, argv)
