"""Test AUC of a trained model when its stored ad vectors are bf16 or int8 instead of fp32.

The ad tower runs once per distinct ad, its output is quantized exactly as `prerank export
--dtype` stores it, and every test row is scored the way the service scores it (bf16 rows meet a
bf16 user vector; int8 rows are dequantized with their per-row scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import load_artifact, quantize
from models.base import join_ads
from offline.data import Dataset
from offline.export import encode_ads
from offline.metrics import auc, logloss

__all__ = ["quantized_auc"]


@torch.inference_mode()
def quantized_auc(
    artifact: Path, dataset: Dataset, dtypes: tuple[str, ...] = ("float32", "bfloat16", "int8"), batch_size: int = 32768
) -> dict[str, Any]:
    """Test AUC / LogLoss per stored dtype, and the change against fp32."""
    bundle = load_artifact(artifact)
    model = bundle.model.eval()
    split = dataset.test
    ads_fp32, routes = encode_ads(model, split.ads, batch_size)
    out: dict[str, Any] = {"model_version": bundle.version, "rows": len(split), "dtypes": {}}
    for dtype in dtypes:
        stored, scales = quantize(ads_fp32, dtype)
        probs = []
        for s in range(0, len(split), batch_size):
            idx = np.arange(s, min(s + batch_size, len(split)))
            user = model.encode_user(split.users.take(split.user_rows[idx]))
            rows = torch.from_numpy(split.ad_rows[idx])
            ads = stored.index_select(0, rows)
            if scales is not None:
                ads = ads.float() * scales.index_select(0, rows).view(-1, *([1] * (ads.dim() - 1)))
            batch = join_ads(ads, None if routes is None else routes.index_select(0, rows))
            probs.append(torch.sigmoid(model.score(user, batch)).float().numpy())
        p = np.concatenate(probs)
        out["dtypes"][dtype] = {"auc": auc(split.labels, p), "logloss": logloss(split.labels, p)}
    base = out["dtypes"]["float32"]["auc"] if "float32" in out["dtypes"] else None
    if base is not None:
        for v in out["dtypes"].values():
            v["auc_change"] = v["auc"] - base
    return out
