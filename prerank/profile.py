"""`prerank profile`: py-spy samples of the server under a fixed open-loop load (loadtest.profile)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest.profile import main as profile_main

    try:
        return profile_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
