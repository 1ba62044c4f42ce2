"""Recall@K of FAISS retrieval against exact brute-force scoring, on a published version.

Usage: python -m service.retrieval_recall --store local:DIR --k 100 500 [--users 300] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.scorer import Scorer
from service.store import open_store

__all__ = ["measure_recall"]


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
        "n_ads": int(version.vectors.shape[0]),
        "heads": int(version.vectors.shape[1]),
        "users": len(rows),
        "results": [],
    }
    for k in ks:
        k = min(k, int(version.vectors.shape[0]))
        recalls, ann_ms, exact_ms = [], [], []
        for row in rows:
            user = scorer.encode_user(version, users.take(np.array([row])))
            t0 = time.perf_counter()
            approx = scorer.candidates(version, user, k, mode="ann")
            t1 = time.perf_counter()
            exact = scorer.candidates(version, user, k, mode="exact")
            t2 = time.perf_counter()
            recalls.append(len(np.intersect1d(approx, exact)) / k)
            ann_ms.append((t1 - t0) * 1e3)
            exact_ms.append((t2 - t1) * 1e3)
        out["results"].append(
            {
                "k": k,
                "recall_mean": float(np.mean(recalls)),
                "recall_min": float(np.min(recalls)),
                "ann_ms_p50": float(np.median(ann_ms)),
                "exact_ms_p50": float(np.median(exact_ms)),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.retrieval_recall", description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--out", type=Path, help="write JSON here (and print a markdown table)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = measure_recall(args.store, args.k, args.users)
    except (ValueError, OSError) as exc:
        print(f"retrieval_recall: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    lines = ["| K | recall@K mean | min | ANN p50 ms | exact p50 ms |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['k']} | {r['recall_mean']:.4f} | {r['recall_min']:.3f} | {r['ann_ms_p50']:.2f} | "
        f"{r['exact_ms_p50']:.2f} |"
        for r in result["results"]
    ]
    print("\n".join(lines))  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
