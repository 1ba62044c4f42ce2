"""FAISS indexes over the ad heads, built at export for whole-corpus retrieval.

Inverted files (IVF): k-means on a sample, then one assignment pass; a search scans `nprobe` of
the `nlist` lists. IVF at every size: an HNSW graph (the index here up to 1M heads before) builds
superlinearly (hours at tens of millions of heads on 2 cores), and on clustered corpora its greedy
search stays inside the cluster it enters: on 50k synthetic ads its recall@100 had a minimum of 0,
and a test corpus of three tight clusters needs efSearch 4,000 of 8,080 points to leave the first.

Two indexes per version (service/scorer.py searches both and rescores the union exactly):

* "heads": one vector per ad head, FAISS id = ad row * H_a + head;
* "pairs" (ads with two heads): per ad, each ordered pair of distinct heads concatenated,
  [a_1, a_2] and [a_2, a_1], FAISS id = ad row * 2 + pair.

With two user heads, MaxSim(u, a) = max over (j, k) of <u_1, a_j> + <u_2, a_k>: the combinations
with j = k are the inner products of u_1 + u_2 with one head (the heads index), the others those
of [u_1, u_2] with a pair. So the exact top K by MaxSim lies in the union of the top K of one query
per index (an ad outside both has K ads above it in each), and the ANN's only loss is the index's
own. Searching each user head alone misses ads that match both user heads moderately: on 10M
synthetic ads, 14% of the exact top 100 were beyond the 4,000 best heads of every single-head query.

Inner products become nearest neighbours by the standard reduction: each vector a becomes
[a, sqrt(M^2 - |a|^2)] (M the largest norm) in an L2 index, and a query u is searched as [u, 0];
then |q - x|^2 = |u|^2 + M^2 - 2 <u, a>, so the nearest are the largest dot products.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["VIEWS", "RowSource", "build_ann", "ivf_lists", "pairs_of"]

#: IVF lists searched per query, stored in the index (the scorer reads it from there).
IVF_NPROBE = 64
#: The same for the pairs index: its fp16 vectors, twice as wide, cost ~5x per list to scan (10M
#: ads, 1 thread: 15.4 ms at 64 lists against 3.0 ms for the heads), and 16 lists kept recall@100
#: at 1.000 there (40 users; 8 lists: 0.960, minimum 0.59).
IVF_PAIRS_NPROBE = 16
#: Training points per IVF list (FAISS warns below 39).
IVF_TRAIN_PER_LIST = 50
#: Ad heads read, augmented and added per step (the build's transient memory: about 0.5 KB per head).
_ADD_BATCH = 262_144
#: What an index holds per ad (module docstring).
VIEWS = ("heads", "pairs")


def ivf_lists(n_vectors: int) -> int:
    """nlist for an IVF index over `n_vectors`: the power of two nearest 2 sqrt(n), at least 256
    (about 2,400 heads per list at 20M heads: 64 probed lists scan 0.8% of them), and at most one
    list per 39 vectors (k-means' minimum training points per centroid)."""
    return max(1, min(max(256, 2 ** round(np.log2(max(2 * np.sqrt(n_vectors), 1.0)))), n_vectors // 39))


def _augment(flat: np.ndarray, max_sq_norm: float) -> np.ndarray:
    """[a, sqrt(M^2 - |a|^2)] per row, float32 (MIPS -> L2)."""
    flat = flat.astype(np.float64)
    extra = np.sqrt(np.maximum(max_sq_norm - (flat**2).sum(axis=1), 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([flat, extra]), dtype=np.float32)


class RowSource(Protocol):
    """(N, H_a, p) ad rows read a row range at a time: a tensor, or `models.artifact.StoredRows`."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> torch.Tensor: ...


def pairs_of(heads: int) -> list[tuple[int, int]]:
    """The ordered pairs of distinct heads a "pairs" index holds per ad, in FAISS id order."""
    return [(j, k) for j in range(heads) for k in range(heads) if j != k]


def _head_batches(vectors: RowSource, view: str = "heads") -> Iterator[tuple[int, np.ndarray]]:
    """(first FAISS id, (k, d) float32 vectors) of the view over the rows, about `_ADD_BATCH` at a time."""
    heads = int(np.prod(vectors[0:1].shape[1:-1]))
    pairs = pairs_of(heads)
    per_row = heads if view == "heads" else len(pairs)
    step = max(1, _ADD_BATCH // max(per_row, 1))
    for start in range(0, len(vectors), step):
        batch = vectors[start : start + step].float()
        if view == "pairs":
            batch = torch.stack([torch.cat([batch[:, j], batch[:, k]], -1) for j, k in pairs], 1)
        yield start * per_row, batch.reshape(-1, batch.shape[-1]).numpy()


def build_ann(vectors: RowSource, view: str = "heads", seed: int = 0) -> Any:
    """A FAISS index of one view (VIEWS) of the ad rows for maximum inner product (write it with
    faiss.write_index: serialising to bytes first would hold a second copy of it in memory).

    The rows are read a range at a time (three passes: the largest norm, IVF's training sample,
    the adds), so an exporter can hand over the index file it just wrote instead of a copy.

    Args:
        vectors: (N, H_a, p) ad rows ("pairs" needs H_a = 2).
        view: "heads" or "pairs" (module docstring).
        seed: IVF's training sample and k-means.
    """
    import faiss

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    first = vectors[0:1]
    heads = int(np.prod(first.shape[1:-1]))
    if view == "pairs" and heads != 2:
        raise ValueError(f"a pairs index needs ads with 2 heads, these have {heads}")
    per_row = heads if view == "heads" else len(pairs_of(heads))
    dim = first.shape[-1] * (1 if view == "heads" else 2) + 1
    n = len(vectors) * per_row
    batches = functools.partial(_head_batches, vectors, view)
    max_sq = max(float((flat.astype(np.float64) ** 2).sum(axis=1).max()) for _, flat in batches())
    nlist = ivf_lists(n)
    ivf: Any
    if view == "heads":
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    else:  # twice the width per vector: half precision keeps it at the heads index's size
        ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16)
    ivf.cp.seed = seed
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))
    picked = []
    for start, flat in batches():
        lo, hi = np.searchsorted(sample, [start, start + len(flat)])
        picked.append(flat[sample[lo:hi] - start])
    ivf.train(_augment(np.concatenate(picked), max_sq))
    for _, flat in batches():  # in batches: no second full-size copy of the matrix
        ivf.add(_augment(flat, max_sq))
    ivf.nprobe = min(IVF_NPROBE if view == "heads" else IVF_PAIRS_NPROBE, nlist)
    return ivf
