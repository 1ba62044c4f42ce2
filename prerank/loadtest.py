"""`prerank loadtest`: headless Locust steps per candidate count and model (loadtest.run)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest.run import main as run_main

    try:
        return run_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
