"""FAISS index over the ad heads, built at export for whole-corpus retrieval.

Id mapping (read by service/scorer.py): FAISS id = ad row * H_a + head. HNSW graphs search
inner products poorly when vector norms vary, so the index uses the standard reduction of
maximum inner product to nearest neighbour: each ad head a becomes [a, sqrt(M^2 - |a|^2)] (M the
largest norm) in an L2 HNSW index, and a query u is searched as [u, 0]; then
|q - x|^2 = |u|^2 + M^2 - 2 <u, a>, so the nearest are the largest dot products.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["build_ann"]


def build_ann(vectors: torch.Tensor, hnsw_m: int = 32, ef_construction: int = 80) -> np.ndarray:
    """An HNSW index over every ad head for maximum inner product, serialised to bytes (uint8 array).

    Args:
        vectors: (N, H_a, p) float ad matrix.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build breadth.
    """
    import faiss

    flat = vectors.float().reshape(-1, vectors.shape[-1]).numpy().astype(np.float64)  # (N * H_a, p)
    sq_norms = (flat**2).sum(axis=1)
    extra = np.sqrt(np.maximum(sq_norms.max() - sq_norms, 0.0))[:, None]
    augmented = np.ascontiguousarray(np.hstack([flat, extra]), dtype=np.float32)  # (N * H_a, p + 1)
    index = faiss.IndexHNSWFlat(augmented.shape[1], hnsw_m)
    index.hnsw.efConstruction = ef_construction
    index.add(augmented)
    return faiss.serialize_index(index)
