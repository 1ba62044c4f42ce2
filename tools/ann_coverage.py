"""Where single-head ANN search loses recall@100: its candidate generation or the IVF index.

For a sample of stored users of a published version: the exact top 100 by MaxSim, then

* `exact_top_in_M{M}`: the share of it that lies within the M best heads (exact inner products)
  of any single-head query the scorer used before the pairs index (each user head, and their sum);
* `exact_cands_M{M}`: recall@100 after rescoring the union of those queries' exact top M heads;
* `ivf_np{P}_M{M}`: the same through the version's IVF heads index at nprobe P (and `_ms`, the
  search time of the queries, 2 threads).

Usage: python -m tools.ann_coverage local:STORE [USERS]   (60 users at 10M ads: ~6 minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from service.scorer import Scorer
from service.store import open_store

__all__ = ["coverage", "main"]

K = 100
COVERAGE_M = (800, 2000, 8000, 32000, 128000)
RESCORED_M = (800, 4000, 16000)
IVF = ((64, 800), (64, 4000), (256, 800), (256, 4000))


def coverage(store_url: str, n_users: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean, min and p99 of every measure over `n_users` stored users (module docstring)."""
    import faiss

    store = open_store(store_url)
    current = store.current()
    if current is None:
        raise ValueError(f"nothing is published in {store_url}")
    version = store.load(current)
    scorer = Scorer()
    matrix = version.rows.vectors.float()
    n, heads, p = matrix.shape
    flat = matrix.reshape(n * heads, p).numpy()
    users = version.index.users
    stats: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        stats.setdefault(key, []).append(value)

    def best_k(cands: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return cands[np.argpartition(-logits[cands], K - 1)[:K]] if len(cands) > K else cands

    for row in np.random.default_rng(seed).choice(users.n_rows, size=min(n_users, users.n_rows), replace=False):
        user = scorer.encode_user(version, users.take(np.array([row])))
        with torch.inference_mode():
            logits = version.bundle.model.score(user, matrix).numpy()
        exact = np.argpartition(-logits, K - 1)[:K]
        queries = user.float().reshape(-1, p).numpy()
        queries = np.vstack([queries, queries.sum(0, keepdims=True)])
        ips = queries @ flat.T  # (Q, N * H)
        covered = {m: np.zeros(K, bool) for m in COVERAGE_M}
        for q in range(len(queries)):
            part = np.partition(-ips[q], [m - 1 for m in COVERAGE_M])
            head_ip = ips[q].reshape(n, heads)[exact].max(1)
            for m in COVERAGE_M:
                covered[m] |= head_ip >= -part[m - 1]
        for m in COVERAGE_M:
            add(f"exact_top_in_M{m}", float(covered[m].mean()))
        for m in RESCORED_M:
            cands = np.unique(
                np.concatenate([np.argpartition(-ips[q], m - 1)[:m] // heads for q in range(len(queries))])
            )
            add(f"exact_cands_M{m}", len(np.intersect1d(best_k(cands, logits), exact)) / K)
        augmented = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
        for nprobe, m in IVF:
            t0 = time.perf_counter()
            params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
            hits = version.ann.search(augmented, m, params=params)[1]
            add(f"ivf_np{nprobe}_M{m}_ms", (time.perf_counter() - t0) * 1e3)
            cands = np.unique(hits[hits >= 0] // heads)
            add(f"ivf_np{nprobe}_M{m}", len(np.intersect1d(best_k(cands, logits), exact)) / K)
    return {
        k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "p99": float(np.percentile(v, 99))}
        for k, v in stats.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ann_coverage", description=__doc__)
    p.add_argument("store")
    p.add_argument("users", type=int, nargs="?", default=60)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    result: dict[str, Any] = {"store": args.store, "users": args.users, "k": K, **coverage(args.store, args.users)}
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
