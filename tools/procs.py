"""Local ports, waiting for a server to become ready, and a process's memory (standard library only)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ServerExited", "free_port", "memory_bytes", "port_in_use", "wait_until_ready"]


class ServerExited(RuntimeError):
    """The server process ended before it became ready."""


def memory_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/PID/status in bytes: VmRSS (resident now), VmHWM (its peak)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` cannot be bound on `host` (another process holds it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until_ready(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 60.0,
    path: str = "/readyz",
    expect: bytes = b"",
    log: Path | None = None,
) -> None:
    """Polls `url + path` until it answers 200 (with `expect` in the body, when given).

    Raises:
        ServerExited: `proc` ended first (its exit status in the message, and the last lines of
            `log`, the file its output goes to, when given).
        TimeoutError: not ready within `timeout` seconds (with `log`'s last lines likewise).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerExited(f"server exited with status {proc.returncode} before it was ready{_tail(log)}")
        try:
            with urllib.request.urlopen(url + path, timeout=1) as resp:
                if resp.status == 200 and expect in resp.read():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "; its output ended with:\n" + "\n".join(text)
