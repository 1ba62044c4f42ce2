"""Where and with which code a number was produced: recorded in every artifact and results file."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["code_version", "machine"]

DISTRIBUTION = "hit-prerank"


def _package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def code_version() -> str:
    """The code that produced a result.

    In a git checkout with git on PATH: the commit, with '-dirty' when tracked files are modified.
    Elsewhere (an installed wheel, an image without git): 'hit-prerank <version> (no git checkout)'.
    Nothing runs at import.
    """
    root = Path(__file__).resolve().parent.parent
    fallback = f"{DISTRIBUTION} {_package_version()} (no git checkout)"
    if not (root / ".git").exists() or shutil.which("git") is None:
        return fallback
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return fallback
    return rev + ("-dirty" if dirty else "")


def machine() -> str:
    """One line: CPU model, core count, Python and torch versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
