"""Builds a markdown results table from the metrics.json files of training runs.

Usage: prerank report movielens RUNS_DIR OUT.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from models.provenance import machine
from offline.metrics import rela_impr
from offline.published import published_in
from tools.markdown import splice

__all__ = ["REPORTS", "movielens_report", "seeds_report", "write_report"]


def _hit_paper(model: str) -> float | None:
    """HIT paper Table 2, MovieLens-1M (mean of 10 runs)."""
    return published_in("HIT paper", model)


def _row(name: str, m: dict[str, Any], base: dict[str, Any] | None) -> str:
    cfg = m.get("model_config", {})
    variant = ""
    if m["model"] == "hit":
        variant = f"gen_loss={cfg.get('gen_loss')}"
    elif m["model"] == "dssm":
        variant = f"temperature={cfg.get('temperature')}"
    relaimpr = "base" if base is None or base is m else f"{rela_impr(m['test_auc'], base['test_auc']):+.2f}%"
    published = _hit_paper(m["model"]) if m["protocol"] == "paper" else None
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


def seeds_report(runs: Path) -> str:
    """Mean and std of test AUC / LogLoss per model over seed repeats (`<model>-paper-s<seed>` dirs)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(runs.glob("*/metrics.json")):
        m = json.loads(p.read_text())
        groups.setdefault(p.parent.name.rsplit("-s", 1)[0], []).append(m)
    if not groups:
        raise FileNotFoundError(f"no */metrics.json under {runs}")
    lines = [
        "| runs | seeds | test AUC mean | std | min | max | LogLoss mean | published AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ms in groups.items():
        aucs = [m["test_auc"] for m in ms]
        pub = _hit_paper(ms[0]["model"])
        lines.append(
            f"| {name} | {sorted(m['seed'] for m in ms)} | {statistics.mean(aucs):.4f} | "
            f"{statistics.stdev(aucs) if len(aucs) > 1 else 0.0:.4f} | {min(aucs):.4f} | {max(aucs):.4f} | "
            f"{statistics.mean(m['test_logloss'] for m in ms):.4f} | {pub if pub else '-'} |"
        )
    codes = sorted({m["code_version"] for ms in groups.values() for m in ms})
    lines += ["", f"Code {codes}. Machine: {machine()}."]
    return "\n".join(lines) + "\n"


#: Report kind -> (marker name in the markdown file, builder).
REPORTS = {"movielens": ("results-table", movielens_report), "seeds": ("seeds-table", seeds_report)}


def write_report(kind: str, runs: Path, out: Path) -> None:
    """Rebuilds the `kind` table from the runs under `runs` inside the markdown file `out`."""
    block, build = REPORTS[kind]
    splice(out, block, build(runs))
