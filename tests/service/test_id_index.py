"""Ad id -> row lookups: the direct-address table for dense ids, the hash index for sparse 64-bit ids."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from service.store import IdIndex


def _reference(ids: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    where = dict(zip(ids.tolist(), rows.tolist(), strict=True))
    known = np.array([q in where for q in queries.tolist()], bool)
    return np.array([where[q] for q in queries[known].tolist()], np.int64), known


@pytest.mark.parametrize(
    "kind",
    ["random 64-bit", "clustered (snowflake-like)", "negative and positive", "dense"],
)
def test_lookups_equal_a_dict_for_every_id_layout(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 50_000
    if kind == "random 64-bit":
        ids = np.unique(rng.integers(0, 2**63 - 1, n + 100))[:n]
    elif kind == "clustered (snowflake-like)":  # sequence numbers under a timestamp: runs of neighbours
        ids = (np.arange(n) // 100 + 1_700_000_000_000) << 22 | (np.arange(n) % 100)
    elif kind == "negative and positive":
        ids = np.unique(rng.integers(-(2**62), 2**62, n + 100))[:n]
    else:
        ids = rng.permutation(n) * 3
    ids = rng.permutation(ids)
    rows = rng.permutation(n)
    index = IdIndex.build(ids, rows)
    assert (index.table is None) == (kind != "dense")
    queries = np.concatenate([rng.choice(ids, 5_000, replace=False), ids[:3] + 1, [0, -1, 2**63 - 1]])
    got_rows, got_known = index.lookup(queries)
    want_rows, want_known = _reference(ids, rows, queries)
    assert np.array_equal(got_known, want_known) and np.array_equal(got_rows, want_rows)
    if index.starts is not None:  # about one bucket per id: short chains whatever the layout
        assert len(index.starts) - 1 >= n and int(np.diff(index.starts).max()) <= 12


def test_duplicates_are_refused_and_changes_keep_the_lookup_exact() -> None:
    for twice in ([5, 2**40, 5], [2**50, 3, 2**50]):
        with pytest.raises(ValueError, match="duplicate ad ids"):
            IdIndex.build(np.array(twice), np.arange(3))
    ids = np.array([2**40 + i * 7919 for i in range(1000)])
    index = IdIndex.build(ids, np.arange(1000))
    changed = index.changed(ids[:10], np.array([ids[10], 2**61]), np.array([5000, 5001]))
    rows, known = changed.lookup(np.array([ids[0], ids[10], ids[11], 2**61]))
    assert known.tolist() == [False, True, True, True] and rows.tolist() == [5000, 11, 5001]
    assert len(changed) == 991 and len(IdIndex.build(np.zeros(0, np.int64), np.zeros(0, np.int64))) == 0


def test_the_sparse_index_neither_copies_ids_nor_grows_past_a_few_bytes_per_id() -> None:
    """Each version a server holds during a hot swap carries one, built beside the live version."""
    n = 1_000_000
    ids = np.random.default_rng(1).integers(2**40, 2**63 - 1, n)
    tracemalloc.start()
    try:
        index = IdIndex.build(ids)  # rows are the ids' positions, as for a loaded version
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.table is None and np.shares_memory(index.ids, ids)
    assert index.nbytes <= 12 * n  # 4-byte slots + 4-8 bytes of bucket offsets per id
    assert peak <= 32 * n  # the build's transient: the hashes (8 B/id), argsort's order (8) and slots (4)
    rows, known = index.lookup(ids[::1000])
    assert known.all() and np.array_equal(rows, np.arange(0, n, 1000))
