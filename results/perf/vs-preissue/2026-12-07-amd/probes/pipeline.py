"""The scoring path of one /prerank request, in process, no HTTP: each step of `Scorer.prerank`
(and the parse before it) timed in a loop over 32 different request bodies of 10,000 real ids
(top_k 200), so each request meets caches as the previous one left them. One torch thread.

Usage, from the repository root (CPU 0, nothing else running):
OMP_NUM_THREADS=1 PYTHONPATH=. taskset -c 0 python results/perf/vs-preissue/2026-12-07-amd/probes/pipeline.py \
    local:runs/vs-preissue/store-now
"""

import collections
import statistics
import sys
import time

import numpy as np
import orjson
import torch

from service.schemas import parse_prerank
from service.scorer import Scorer
from service.store import open_store

torch.set_num_threads(1)
store = open_store(sys.argv[1])
version = store.load(store.current() or "")
scorer = Scorer("cpu")
scorer.swap(version)
rng = np.random.default_rng(0)
users = version.index.user_ids
bodies = [
    orjson.dumps(
        {
            "user": {"id": users[rng.integers(len(users))]},
            "candidates": {"ad_ids": rng.choice(version.live_ids, 10_000, replace=False).tolist()},
            "top_k": 200,
        }
    )
    for _ in range(32)
]
steps: dict[str, list[float]] = collections.defaultdict(list)


def one(body: bytes) -> None:
    marks = [time.perf_counter()]

    def mark(name: str) -> None:
        marks.append(time.perf_counter())
        steps[name].append((marks[-1] - marks[-2]) * 1e3)

    request = parse_prerank(body)
    mark("parse")
    feats, _, _ = scorer.user_features(request.user, request.unknown_user, version)
    mark("user features")
    rows, known = version.lookup(request.candidates.ids)
    mark("id lookup")
    user = scorer.encode_user(version, feats)
    mark("user tower")
    timings: dict[str, float] = {}
    order, pctr, ecpm = scorer._rank(version, user, rows, None, request.top_k, timings)
    mark("gather + score + calibrate + top-k")
    _ = request.candidates.ids[known][order], pctr[order], ecpm[order]
    mark("result columns")
    steps["total"].append((marks[-1] - marks[0]) * 1e3)


for i in range(1000):
    one(bodies[i % len(bodies)])
print("step | p50 ms (requests 200-1000)")
for name, values in steps.items():
    print(f"{name} | {statistics.median(values[200:]):.3f}")
