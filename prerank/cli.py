"""The `prerank` command: `prerank JOB [flags]` runs `prerank.<module>.main(flags)`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from prerank import JOBS

__all__ = ["main"]


def _usage() -> str:
    width = max(map(len, JOBS))
    lines = [
        "usage: prerank [-h] JOB [flags]   (prerank JOB --help for a job's flags)",
        "",
        "HIT pre-ranking: train, export, serve, measure.",
        "",
        "jobs:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in JOBS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prerank` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in JOBS:
        print(f"prerank: error: unknown job {name!r}; choose from {', '.join(JOBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"prerank.{JOBS[name][0]}")
    code: int = module.main(rest)
    return code
