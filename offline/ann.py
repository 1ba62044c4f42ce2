"""FAISS index over the ad heads, built at export for whole-corpus retrieval.

Chosen by the corpus size: an HNSW graph up to `HNSW_MAX_VECTORS` ad heads (best recall per
query, but its build grows superlinearly: hours at tens of millions on 2 cores), and an inverted
file (IVF, flat lists) above it, which builds in minutes (k-means on a sample, then one
assignment pass) and searches `nprobe` of its `nlist` lists.

Id mapping (read by service/scorer.py): FAISS id = ad row * H_a + head. HNSW graphs search
inner products poorly when vector norms vary, so the index uses the standard reduction of
maximum inner product to nearest neighbour: each ad head a becomes [a, sqrt(M^2 - |a|^2)] (M the
largest norm) in an L2 HNSW index, and a query u is searched as [u, 0]; then
|q - x|^2 = |u|^2 + M^2 - 2 <u, a>, so the nearest are the largest dot products.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["HNSW_MAX_VECTORS", "RowSource", "build_ann", "ivf_lists"]

#: Ad heads up to which the index is HNSW; above, IVF.
HNSW_MAX_VECTORS = 1_000_000
#: IVF lists searched per query, stored in the index (the scorer reads it from there).
IVF_NPROBE = 64
#: Training points per IVF list (FAISS warns below 39).
IVF_TRAIN_PER_LIST = 50
#: Ad heads read, augmented and added per step (the build's transient memory: about 0.5 KB per head).
_ADD_BATCH = 262_144


def ivf_lists(n_vectors: int) -> int:
    """nlist for an IVF index over `n_vectors`: the power of two nearest 2 sqrt(n), at least 256
    (about 2,400 heads per list at 20M heads: 64 probed lists scan 0.8% of them)."""
    return max(256, 2 ** round(np.log2(max(2 * np.sqrt(n_vectors), 1.0))))


def _augment(flat: np.ndarray, max_sq_norm: float) -> np.ndarray:
    """[a, sqrt(M^2 - |a|^2)] per row, float32 (MIPS -> L2)."""
    flat = flat.astype(np.float64)
    extra = np.sqrt(np.maximum(max_sq_norm - (flat**2).sum(axis=1), 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([flat, extra]), dtype=np.float32)


class RowSource(Protocol):
    """(N, H_a, p) ad rows read a row range at a time: a tensor, or `models.artifact.StoredRows`."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> torch.Tensor: ...


def _head_batches(vectors: RowSource) -> Iterator[tuple[int, np.ndarray]]:
    """(first head id, (k, p) float32 heads) over the rows, about `_ADD_BATCH` heads at a time."""
    heads = int(np.prod(vectors[0:1].shape[1:-1]))
    step = max(1, _ADD_BATCH // max(heads, 1))
    for start in range(0, len(vectors), step):
        batch = vectors[start : start + step].float()
        yield start * heads, batch.reshape(-1, batch.shape[-1]).numpy()


def build_ann(vectors: RowSource, hnsw_m: int = 32, ef_construction: int = 80, seed: int = 0) -> Any:
    """A FAISS index over every ad head for maximum inner product (write it with faiss.write_index:
    serialising to bytes first would hold a second copy of it in memory).

    The rows are read a range at a time (three passes: the largest norm, IVF's training sample,
    the adds), so an exporter can hand over the index file it just wrote instead of a copy.

    Args:
        vectors: (N, H_a, p) ad rows.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build breadth.
        seed: IVF's training sample and k-means.
    """
    import faiss

    first = vectors[0:1]
    dim = first.shape[-1] + 1
    n = len(vectors) * int(np.prod(first.shape[1:-1]))
    max_sq = max(float((flat.astype(np.float64) ** 2).sum(axis=1).max()) for _, flat in _head_batches(vectors))
    if n <= HNSW_MAX_VECTORS:
        index = faiss.IndexHNSWFlat(dim, hnsw_m)
        index.hnsw.efConstruction = ef_construction
        index.add(_augment(np.concatenate([flat for _, flat in _head_batches(vectors)]), max_sq))
        return index
    nlist = ivf_lists(n)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    ivf.cp.seed = seed
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))
    picked = []
    for start, flat in _head_batches(vectors):
        lo, hi = np.searchsorted(sample, [start, start + len(flat)])
        picked.append(flat[sample[lo:hi] - start])
    ivf.train(_augment(np.concatenate(picked), max_sq))
    for _, flat in _head_batches(vectors):  # in batches: no second full-size copy of the matrix
        ivf.add(_augment(flat, max_sq))
    ivf.nprobe = min(IVF_NPROBE, nlist)
    return ivf
