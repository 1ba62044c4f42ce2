"""`prerank shadow-bench`: live p99 with and without a slow shadow candidate (tools.shadow_bench)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    from tools.shadow_bench import parser as tool_parser

    return tool_parser()


def main(argv: Sequence[str] | None = None) -> int:
    from tools.shadow_bench import main as bench_main

    try:
        return bench_main(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
