"""Recall@K of FAISS retrieval against exact brute-force scoring, on a published version.

Usage: prerank retrieval-recall --store local:DIR --k 100 500 [--users 300] [--out FILE.json]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from models.provenance import code_version, machine
from service.scorer import Scorer
from service.store import open_store

__all__ = ["markdown", "measure_recall"]


def measure_recall(store_url: str, ks: list[int], n_users: int = 300, seed: int = 0) -> dict[str, Any]:
    """Mean recall@K (ANN top-K ∩ exact top-K / K) over a sample of stored users, with timings."""
    store = open_store(store_url)
    current = store.current()
    if current is None:
        raise ValueError(f"nothing is published in {store_url}")
    version = store.load(current)
    if version.ann is None:
        raise ValueError(f"version {current} has no FAISS index")
    scorer = Scorer()
    users = version.index.users
    rows = np.random.default_rng(seed).choice(users.n_rows, size=min(n_users, users.n_rows), replace=False)
    out: dict[str, Any] = {
        "version": current,
        "model_version": version.model_version,
        "n_ads": int(version.rows.vectors.shape[0]),
        "heads": int(version.rows.vectors.shape[1]),
        "index": type(version.ann).__name__ + (" + pairs" if version.ann_pairs is not None else ""),
        "users": len(rows),
        "user_sample_seed": seed,
        "machine": machine(),
        "code_version": code_version(),
        "protocol": "each user's ANN call timed back to back with the others', then every exact pass (one "
        "torch thread); recall = |ANN top-K & exact top-K| / K",
        "results": [],
    }
    encoded = [scorer.encode_user(version, users.take(np.array([row]))) for row in rows]
    for k in ks:
        k = min(k, int(version.rows.vectors.shape[0]))
        # Every ANN call first, back to back as a server answering /retrieve makes them, then every
        # exact pass: an exact pass streams the whole corpus through the caches and would leave
        # the ANN call after it cold.
        approx, ann_ms = [], []
        for user in encoded:
            t0 = time.perf_counter()
            approx.append(scorer.candidates(version, user, k, mode="ann"))
            ann_ms.append((time.perf_counter() - t0) * 1e3)
        recalls, exact_ms = [], []
        for user, found in zip(encoded, approx, strict=True):
            t0 = time.perf_counter()
            exact = scorer.candidates(version, user, k, mode="exact")
            exact_ms.append((time.perf_counter() - t0) * 1e3)
            recalls.append(len(np.intersect1d(found, exact)) / k)
        out["results"].append(
            {
                "k": k,
                "recall_mean": float(np.mean(recalls)),
                "recall_min": float(np.min(recalls)),
                "ann_ms_p50": float(np.median(ann_ms)),
                "ann_ms_p99": float(np.percentile(ann_ms, 99)),
                "exact_ms_p50": float(np.median(exact_ms)),
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    """The recall table of a `measure_recall` result."""
    lines = ["| K | recall@K mean | min | ANN p50 / p99 ms | exact p50 ms |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['k']} | {r['recall_mean']:.4f} | {r['recall_min']:.3f} | {r['ann_ms_p50']:.2f} / "
        f"{r.get('ann_ms_p99', float('nan')):.2f} | {r['exact_ms_p50']:.2f} |"
        for r in result["results"]
    ]
    return "\n".join(lines) + "\n"
