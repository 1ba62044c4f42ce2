"""Kernel benchmark of the service's own scoring path, beside the machine's memory-copy bandwidth.

For each model configuration, stored vector type and candidate count it times, in one process:
  * `score`: gather of the candidates' rows from the in-memory index + the batched score
             (`Scorer.score_rows`, fused chunk by chunk);
  * `path`:  `Scorer.prerank` on a parsed request (user features, user tower, id lookup, gather,
             score, eCPM, top-k) -- everything but HTTP and JSON.
Efficiency = bytes of ad vectors read / score time / measured copy bandwidth.

Usage: prerank bench [--out results/bench] [--ads 100000] [--repeats 200]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import Bundle, IndexData
from models.base import join_ads, split_ads
from models.features import FeatureSchema, FeatureSpec, Kind, Side, Vocabulary
from models.provenance import code_version, machine
from models.registry import build_model
from models.rows import AdRows
from models.tables import FeatureTable
from service.schemas import Candidates, PrerankRequest, UserInput
from service.scorer import Scorer
from service.store import ServingVersion, build_version
from tools.plotting import pyplot

__all__ = ["CANDIDATES", "CONFIGS", "DTYPES", "BenchConfig", "copy_bandwidth", "markdown", "plot", "run_bench"]

CANDIDATES = (100, 1000, 5000, 10000)
DTYPES = ("float32", "bfloat16", "int8")


@dataclass(frozen=True)
class BenchConfig:
    label: str
    model: str
    overrides: dict[str, Any]


CONFIGS = (
    BenchConfig("hit 2x16", "hit", {}),
    BenchConfig("dssm 1x32", "dssm", {}),
    BenchConfig("hit 8x64 (heavy)", "hit", {"heads": 8, "head_dim": 64}),
    BenchConfig("dat 1x32", "dat", {}),
    BenchConfig("inttower 6x2x64", "inttower", {}),
    BenchConfig("fit K32 4x4x16", "fit", {}),
    BenchConfig("cold 300-300-128", "cold", {}),
    BenchConfig("lr", "lr", {}),
    BenchConfig("deepfm 300-300-128", "deepfm", {}),
    BenchConfig("dcn 3 cross + 300-300-128", "dcn", {}),
)
#: A cell stops early once its timed calls add up to this many seconds (slow models, e.g. COLD).
CELL_BUDGET_S = 4.0
MIN_REPEATS = 30

SCHEMA = FeatureSchema(
    (
        FeatureSpec("user_id", Side.USER, Kind.SPARSE, "user_id"),
        FeatureSpec("segment", Side.USER, Kind.SPARSE, "segment", static=True),
        FeatureSpec("history", Side.USER, Kind.SEQUENCE, "ad_id"),
        FeatureSpec("ad_id", Side.AD, Kind.SPARSE, "ad_id"),
        FeatureSpec("category", Side.AD, Kind.SPARSE, "category", static=True),
    ),
    {"user_id": 1000, "segment": 16, "ad_id": 100_000, "category": 50},
)


def copy_bandwidth(megabytes: int = 512, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-N `Tensor.copy_` rate in bytes copied per second (each byte read once, written once)."""
    n = megabytes * 1024 * 1024 // 4
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    return src.numel() * 4 / best


def _version(cfg: BenchConfig, n_ads: int, dtype: str, seed: int = 0, device: str = "cpu") -> ServingVersion:
    torch.manual_seed(seed)
    model = build_model(cfg.model, SCHEMA, cfg.overrides).eval()
    bundle = Bundle(
        model,
        SCHEMA,
        {k: Vocabulary([str(i) for i in range(v)]) for k, v in SCHEMA.vocab_sizes.items()},
        {"model_version": f"{cfg.model}-bench"},
    )
    with torch.inference_mode():
        rows = torch.arange(n_ads) % SCHEMA.vocab_sizes["ad_id"] + 1
        ads, routes = split_ads(model.encode_ad({"ad_id": rows, "category": rows % 50 + 1}))
    stored = AdRows.quantize(join_ads(ads.float(), routes), dtype)
    users = FeatureTable(
        1000,
        sparse={"user_id": np.arange(1, 1001), "segment": np.arange(1000) % 16 + 1},
        sequences={"history": (np.arange(1, 50_001) % 100_000, np.arange(0, 50_001, 50))},
    )
    index = IndexData(
        manifest={"version": "bench", "model_version": bundle.version, "dtype": dtype},
        ad_ids=np.arange(n_ads, dtype=np.int64) * 7 + 1,
        rows=stored,
        bids=np.ones(n_ads, np.float32),
        user_ids=[str(i) for i in range(1000)],
        users=users,
    )
    model.to(device)
    return build_version(bundle, index, device)


def _percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def run_bench(
    n_ads: int = 100_000,
    repeats: int = 200,
    configs: tuple[BenchConfig, ...] = CONFIGS,
    candidates: tuple[int, ...] = CANDIDATES,
    dtypes: tuple[str, ...] = DTYPES,
    device: str = "cpu",
) -> dict[str, Any]:
    """Runs every (config, dtype, candidate count) cell; returns the results document."""
    bandwidth = copy_bandwidth(device=device)
    rng = np.random.default_rng(0)
    scorer = Scorer(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cells = []
    for cfg in configs:
        for dtype in dtypes:
            version = _version(cfg, n_ads, dtype, device=device)
            scorer.swap(version)
            user = scorer.encode_user(version, version.index.users.take(np.array([0])))
            per_row = version.rows.row_bytes
            for n in candidates:
                rows = [np.sort(rng.choice(n_ads, n, replace=False)) for _ in range(8)]
                score_t, path_t, gather_t, compute_t = [], [], [], []
                requests = [
                    PrerankRequest(
                        user=UserInput(id=str(i % 1000)),
                        top_k=200,
                        candidates=Candidates(ad_ids=version.index.ad_ids[r].tolist(), bids=[1.0] * n),
                    )
                    for i, r in enumerate(rows)
                ]
                for i in range(repeats + 10):
                    r = rows[i % len(rows)]
                    split: dict[str, float] = {}
                    t0 = time.perf_counter()
                    scorer.score_rows(version, user, r, split)
                    sync()
                    t1 = time.perf_counter()
                    scorer.prerank(requests[i % len(requests)])
                    t2 = time.perf_counter()
                    if i >= 10:  # warm-up excluded
                        score_t.append(t1 - t0)
                        path_t.append(t2 - t1)
                        gather_t.append(split["gather"])
                        compute_t.append(split["score"])
                        if len(score_t) >= MIN_REPEATS and sum(score_t) + sum(path_t) > CELL_BUDGET_S:
                            break
                score = _percentiles(score_t)
                bytes_read = n * per_row
                cells.append(
                    {
                        "config": cfg.label,
                        "model": cfg.model,
                        "dtype": dtype,
                        "candidates": n,
                        "bytes_read": bytes_read,
                        "score": score,
                        "path": _percentiles(path_t),
                        "repeats": len(score_t),
                        "gather_p50_ms": float(np.median(gather_t)),
                        "compute_p50_ms": float(np.median(compute_t)),
                        "efficiency": bytes_read / (score["p50_ms"] / 1e3) / bandwidth,
                    }
                )
    return {
        "machine": machine(),
        "code_version": code_version(),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "n_ads": n_ads,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": device if device == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "cells": cells,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Machine: {result['machine']}; device {result.get('device', 'cpu')}; torch threads {result['torch_threads']}; "
        f"corpus {result['n_ads']:,} ads; "
        f"{result['repeats']} timed repeats per cell; copy bandwidth {result['copy_bandwidth_gb_s']:.1f} GB/s.",
        "",
        "| config | dtype | candidates | score p50 ms | score p99 ms | gather / compute p50 ms | path p50 ms "
        "| path p99 ms | MB read | efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['config']} | {c['dtype']} | {c['candidates']} | {c['score']['p50_ms']:.3f} | "
            f"{c['score']['p99_ms']:.3f} | {c['gather_p50_ms']:.3f} / {c['compute_p50_ms']:.3f} | "
            f"{c['path']['p50_ms']:.3f} | {c['path']['p99_ms']:.3f} | "
            f"{c['bytes_read'] / 1e6:.2f} | {c['efficiency']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cfg in dict.fromkeys(c["config"] for c in result["cells"]):
        for dtype in ("float32", "bfloat16"):
            pts = [c for c in result["cells"] if c["config"] == cfg and c["dtype"] == dtype]
            if pts:
                ax.plot(
                    [c["candidates"] for c in pts],
                    [c["path"]["p50_ms"] for c in pts],
                    marker="o",
                    linestyle="-" if dtype == "float32" else "--",
                    label=f"{cfg} {dtype}",
                )
    ax.set_xscale("log")
    ax.set_xlabel("candidates per request")
    ax.set_ylabel("scoring path p50 (ms)")
    ax.set_title("Scoring path latency (no HTTP)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
