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

from models.artifact import load_artifact
from models.base import PrerankModel, join_ads
from models.rows import AdRows
from offline.data import Dataset, Split
from offline.export import encode_ads
from offline.metrics import auc, logloss

__all__ = ["quantized_auc", "quantized_predictions"]


@torch.inference_mode()
def quantized_predictions(model: PrerankModel, split: Split, dtype: str, batch_size: int = 32768) -> np.ndarray:
    """pCTR of every row of `split` with the ad rows stored as `dtype` and read back as served."""
    model.eval()
    stored = AdRows.quantize(join_ads(*encode_ads(model, split.ads, batch_size)), dtype)
    probs = []
    for s in range(0, len(split), batch_size):
        idx = np.arange(s, min(s + batch_size, len(split)))
        user = model.encode_user(split.users.take(split.user_rows[idx]))
        batch = stored.take(torch.from_numpy(split.ad_rows[idx]))  # exactly what the service gathers
        probs.append(torch.sigmoid(model.score(user, batch)).float().numpy())
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def quantized_auc(
    artifact: Path, dataset: Dataset, dtypes: tuple[str, ...] = ("float32", "bfloat16", "int8"), batch_size: int = 32768
) -> dict[str, Any]:
    """Test AUC / LogLoss per stored dtype, and the change against fp32."""
    bundle = load_artifact(artifact)
    split = dataset.test
    out: dict[str, Any] = {"model_version": bundle.version, "rows": len(split), "dtypes": {}}
    for dtype in dtypes:
        p = quantized_predictions(bundle.model, split, dtype, batch_size)
        out["dtypes"][dtype] = {"auc": auc(split.labels, p), "logloss": logloss(split.labels, p)}
    base = out["dtypes"]["float32"]["auc"] if "float32" in out["dtypes"] else None
    if base is not None:
        for v in out["dtypes"].values():
            v["auc_change"] = v["auc"] - base
    return out
