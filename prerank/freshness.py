"""`prerank freshness`: update-to-visible bounds under open-loop load (tools.freshness)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    from tools.freshness import parser as tool_parser

    return tool_parser()


def main(argv: Sequence[str] | None = None) -> int:
    from tools.freshness import main as freshness_main

    try:
        return freshness_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
