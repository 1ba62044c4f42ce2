"""FAISS index over the ad heads, built at export for whole-corpus retrieval.

Id mapping (read by service/retrieval.py): FAISS id = ad row * H_a + head, inner-product metric,
so a search with one user head finds the ad heads that maximise that head's dot product.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["build_ann"]


def build_ann(vectors: torch.Tensor, hnsw_m: int = 32, ef_construction: int = 80) -> np.ndarray:
    """An HNSW inner-product index over every ad head, serialised to bytes (uint8 array).

    Args:
        vectors: (N, H_a, p) float ad matrix.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build breadth.
    """
    import faiss

    flat = vectors.float().reshape(-1, vectors.shape[-1]).contiguous().numpy()  # (N * H_a, p)
    index = faiss.IndexHNSWFlat(flat.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(flat)
    return faiss.serialize_index(index)
