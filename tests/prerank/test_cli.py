"""The `prerank` entry points: every job's --help, the error model (one line, exit 2) and a real run."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prerank import JOBS
from prerank.cli import main
from prerank.job import PROTOCOLS, job_parser, run_job
from tools.procs import free_port


def test_cli_train_and_export_on_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "a"
    argv = ["train", "--model", "dssm", "--epochs", "1", "--out", str(art), "--no-progress", "--threads", "1"]
    assert main([*argv, "--model-config", '{"temperature": 5}']) == 0
    assert "dssm test AUC" in capsys.readouterr().out
    assert main(["export", str(art), "--store", f"local:{tmp_path / 's'}"]) == 0
    assert "published index v000001" in capsys.readouterr().out
    assert main(["versions", "--store", f"local:{tmp_path / 's'}"]) == 0
    assert capsys.readouterr().out.startswith("* v000001  dssm-")


@pytest.mark.parametrize("job", list(JOBS))
def test_every_job_has_help(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([job, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: prerank {job}" in out and "--" in out


def test_top_level_usage_lists_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {job} " in out for job in JOBS)
    assert main(["nope"]) == 2 and "unknown job 'nope'" in capsys.readouterr().err


def test_protocol_choices_match_the_loader() -> None:
    from offline.data.movielens import PROTOCOLS as LOADER_PROTOCOLS

    assert tuple(LOADER_PROTOCOLS) == PROTOCOLS


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--model", "nope", "--out", "X"], "invalid choice: 'nope'"),
        (["train", "--model-config", '{"nope": 1}', "--out", "X"], "unknown hit config keys ['nope']"),
        (["train", "--dataset", "nope", "--out", "X"], "unknown dataset 'nope'"),
        (["train", "--dataset", "movielens-1m", "--data-dir", "/nonexistent", "--out", "X"], "users.dat"),
        (["train", "--baseline", "/nonexistent", "--out", "X"], "--baseline /nonexistent: no such file"),
        (["export", "/nonexistent", "--store", "local:X"], "missing meta.json"),
        (["export", "/nonexistent", "--store", "ftp://x"], "store URL must be"),
        (["export", "/nonexistent", "--store", "DEAD"], "is unreachable"),
        (["versions", "--store", "local:/nonexistent/store"], "does not exist"),
        (["versions", "--store", "DEAD"], "is unreachable"),
        (["rollback", "v000001", "--store", "local:/nonexistent/store"], "does not exist"),
        (["serve", "--store", "ftp://x", "--port", "PORT"], "store URL must be"),
        (["serve", "--store", "local:/nonexistent/store", "--port", "PORT"], "does not exist"),
        (["serve", "--store", "DEAD", "--port", "PORT"], "is unreachable"),
        (["serve", "/nonexistent/artifact", "--store", "local:STORE", "--port", "PORT"], "missing meta.json"),
        (["serve", "--store", "local:STORE", "--device", "tpu", "--port", "PORT"], "device"),
        (
            ["serve", "--store", "local:STORE", "--workers", "2", "--grpc-port", "PORT2", "--port", "PORT"],
            "one process",
        ),
        (["ingest", "--store", "local:STORE"], "needs a redis:// store"),
        (["ads", "pause", "abc", "--store", "DEAD"], "ad ids are integers"),
        (["experiment", "start", "e", "--store", "local:STORE", "--arm", "a=live:1"], "--salt is required"),
        (["demo", "--data-dir", "/nonexistent", "--port", "PORT"], "no MovieLens-1M files there"),
        (["zoo", "--models", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(argv: list[str], needle: str, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    subs = {"X": str(tmp_path / "x"), "DEAD": _dead_redis(), "PORT": str(free_port()), "PORT2": str(free_port())}
    subs["local:STORE"] = f"local:{tmp_path / 'store'}"
    argv = [subs.get(a, a) for a in argv]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "prerank", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith(f"prerank {argv[0]}: error: ") and needle in lines[-1], proc.stderr
    assert sum("error" in line for line in lines) == 1
    assert time.monotonic() - t0 < 30  # cheap checks fail before any data is loaded


def test_serve_refuses_a_busy_port(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", "--store", f"local:{tmp_path / 'store'}", "--port", str(port)]
        proc = subprocess.run([sys.executable, "-m", "prerank", *argv], capture_output=True, text=True, timeout=60)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"prerank serve: error: port {port} on 127.0.0.1 is in use; pass --port"
    )


def test_verbose_adds_the_traceback_to_a_user_error() -> None:
    argv = ["versions", "-v", "--store", "local:/nonexistent/store"]
    proc = subprocess.run([sys.executable, "-m", "prerank", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "StoreUnavailable" in proc.stderr


def test_programming_errors_keep_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def buggy(_: argparse.Namespace) -> None:
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        run_job("x", job_parser("x", "test"), buggy, [])
    messages = ["it's 'quoted'"]

    def user_error(_: argparse.Namespace) -> None:
        raise ValueError(messages[0])

    assert run_job("x", job_parser("x", "test"), user_error, []) == 2
    assert capsys.readouterr().err == "prerank x: error: it's 'quoted'\n"  # no quote stripping
