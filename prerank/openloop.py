"""`prerank openloop`: open-loop (k6, constant arrival rate) capacity sweep (loadtest.openloop)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest.openloop import main as openloop_main

    try:
        return openloop_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
