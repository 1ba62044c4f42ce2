"""`prerank soak`: steady load while a new version is published every minute (loadtest.soak)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest.soak import main as soak_main

    try:
        return soak_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
