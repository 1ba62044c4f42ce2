"""Builds a markdown results table from the metrics.json files of training runs.

Usage: python -m offline.report movielens RUNS_DIR OUT.md
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from offline.metrics import rela_impr

__all__ = ["machine", "movielens_report"]

PUBLISHED = {"hit": 0.9048, "dssm": 0.8697}  # HIT paper Table 2, MovieLens-1M (mean of 10 runs)


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def _row(name: str, m: dict[str, Any], base: dict[str, Any] | None) -> str:
    cfg = m.get("model_config", {})
    variant = ""
    if m["model"] == "hit":
        variant = f"gen_loss={cfg.get('gen_loss')}"
    elif m["model"] == "dssm":
        variant = f"temperature={cfg.get('temperature')}"
    relaimpr = "base" if base is None or base is m else f"{rela_impr(m['test_auc'], base['test_auc']):+.2f}%"
    published = PUBLISHED.get(m["model"]) if m["protocol"] == "paper" else None
    pub = f"{published:.4f}" if published and (m["model"] != "dssm" or cfg.get("temperature") == 1.0) else "-"
    return (
        f"| {name} | {m['protocol']} | {m['model']} ({variant}) | {m['test_auc']:.4f} | {m['test_logloss']:.4f} | "
        f"{relaimpr} | {pub} | {m['best_epoch']}/{m['epochs']} | {m['seconds_per_epoch']:.0f} | {m['params']:,} |"
    )


def movielens_report(runs: Path) -> str:
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/metrics.json"))}
    if not metrics:
        raise FileNotFoundError(f"no */metrics.json under {runs}")
    any_m = next(iter(metrics.values()))
    lines = [
        "| run | protocol | model | test AUC | test LogLoss | RelaImpr vs dssm-<protocol> | published AUC "
        "| best/epochs | s/epoch | params |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_row(name, m, metrics.get(f"dssm-{m['protocol']}")) for name, m in metrics.items()),
        "",
        f"Data: {any_m['dataset']} sha256 `{any_m['data_sha256'][:16]}…`, split seed {any_m.get('split_seed')}, "
        f"model seed {any_m.get('seed')}, code {sorted({m['code_version'] for m in metrics.values()})}.",
        f"Machine: {machine()}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "movielens":
        print("usage: python -m offline.report movielens RUNS_DIR OUT.md", file=sys.stderr)  # noqa: T201
        return 2
    table = movielens_report(Path(args[1]))
    out = Path(args[2])
    marker = "<!-- results-table -->"
    if out.exists() and marker in out.read_text():
        head, _, rest = out.read_text().partition(marker)
        tail = rest.split("<!-- /results-table -->", 1)[-1]
        out.write_text(f"{head}{marker}\n{table}<!-- /results-table -->{tail}")
    else:
        out.write_text(f"{marker}\n{table}<!-- /results-table -->\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
