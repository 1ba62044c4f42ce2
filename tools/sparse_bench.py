"""Training step time against vocabulary size: dense Adam vs sparse embedding updates.

Builds HIT on the synthetic schema with the `ad_id` table resized to each vocabulary size, draws
batches with ad ids uniform over the table, and times forward + backward + optimizer step (the
first steps are warm-up) with dense tables under Adam plus the whole-table L2 (the default recipe)
and with `TrainConfig.sparse_embeddings` (SparseAdam on the tables, L2 on the looked-up rows).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from models.features import FeatureSchema
from models.registry import build_model, config_from_dict
from offline.data.synthetic import make_synthetic
from offline.sparse import SparseEmbeddings
from offline.train import TrainConfig, _optimizer, _TrainStep

__all__ = ["step_times"]


def step_times(vocab: int, sparse: bool, batch_size: int = 2048, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Median and p90 step time in ms for one configuration."""
    data = make_synthetic(n_users=2000, n_ads=500, n_rows=20_000, seed=1)
    schema = FeatureSchema(data.schema.features, {**data.schema.vocab_sizes, "ad_id": vocab})
    torch.manual_seed(0)
    model = build_model("hit", schema, config_from_dict("hit", {}))
    cfg = TrainConfig(sparse_embeddings=sparse)
    helper = SparseEmbeddings(model) if sparse else None
    step = _TrainStep(model, cfg.l2, 1, helper.l2 if helper else None)
    optimizer = _optimizer(cfg, model, helper)
    rng = np.random.default_rng(0)
    model.train()
    times = []
    for i in range(warmup + steps):
        rows = rng.integers(0, len(data.train), batch_size)
        feats, labels = data.train.batch(rows)
        feats["ad_id"] = torch.from_numpy(rng.integers(1, vocab + 1, batch_size))
        t0 = time.perf_counter()
        loss = step(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    table = dict(model.named_parameters())
    params = sum(p.numel() for p in table.values())
    return {
        "vocab": vocab,
        "mode": "sparse" if sparse else "dense",
        "step_ms_p50": round(float(np.median(times)), 1),
        "step_ms_p90": round(float(np.percentile(times, 90)), 1),
        "parameters": int(params),
        "batch_size": batch_size,
        "steps": steps,
    }
