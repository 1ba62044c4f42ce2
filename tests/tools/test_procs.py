"""Waiting for a server: a process that dies first is reported with its status and its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.procs import ServerExited, free_port, wait_until_ready


def test_a_server_that_exits_is_reported_with_its_status_and_last_output(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    script = "import sys; print('starting'); print('GCS did not start in time', file=sys.stderr); sys.exit(3)"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    with pytest.raises(ServerExited, match=r"status 3 .*\n(?s:.*)GCS did not start in time"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}", proc, timeout=30, log=log)


def test_a_server_that_never_answers_times_out_with_its_output(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("listening on a port nobody asked for\n")
    with pytest.raises(TimeoutError, match=r"not ready within 1s(?s:.*)nobody asked for"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}", None, timeout=1, log=log)
