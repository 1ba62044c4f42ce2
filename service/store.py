"""Loads the live model + index version from a store into memory and follows the pointer.

A `ServingVersion` is immutable once built: the model, the ad matrix, the id lookup and the
user feature store of one published version. The scorer holds one reference and swaps it whole,
so a request never mixes versions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from models.artifact import (
    ANN_FILE,
    ANN_PAIRS_FILE,
    MODEL_SUBDIR,
    ArtifactError,
    Bundle,
    IndexData,
    load_artifact,
    load_index,
)
from models.base import join_ads, split_ads
from models.features import Features, Kind, default_features, move_features
from models.layers import fold_for_inference
from models.rows import AdRows
from storage import VERSIONS_DIR, RedisKeys, fetch_redis_version, parse_store_url, read_pointer
from storage.deltas import AdDelta, read_deltas, read_paused
from storage.experiments import (
    Experiment,
    ShadowConfig,
    clear_config,
    clear_local_config,
    read_config,
    read_local_config,
    write_config,
    write_local_config,
)
from storage.user_features import UserRowCodec

__all__ = [
    "IdIndex",
    "LocalStore",
    "RedisStore",
    "ServingVersion",
    "Store",
    "build_version",
    "load_version",
    "open_store",
]

log = logging.getLogger(__name__)

#: Ad ids below max(DENSE_ID_FACTOR * n_ads, DENSE_ID_MIN) get a direct-address lookup table
#: (at most 4 bytes per id value: 16 MB for the minimum, 32 bytes per ad beyond it).
DENSE_ID_FACTOR = 8
DENSE_ID_MIN = 1 << 22
#: Spare rows reserved when the row buffer grows for a delta (plus 1/8 of its size).
SPARE_ROWS_MIN = 1024


#: Fibonacci hashing's multiplier (2**64 / golden ratio): spreads sequential and clustered ids alike.
_HASH = np.uint64(0x9E3779B97F4A7C15)
_BUCKET_CHUNK = 1 << 18


def _buckets(ids: np.ndarray, bits: int) -> np.ndarray:
    """The hash bucket of each id, in [0, 2**bits): the top bits of id x _HASH mod 2**64."""
    return ((ids.astype(np.uint64) * _HASH) >> np.uint64(64 - bits)).astype(np.int64)


@dataclass(frozen=True)
class IdIndex:
    """Ad id -> stored row for the ads a version ranks. Immutable: `changed` returns a new one.

    Dense id spaces get a direct-address table (one gather: 10k ids in ~0.05 ms). Sparse ones
    (hashed or 64-bit ids) get a hash index in CSR form: the ids' positions grouped by a
    multiplicative hash into about one bucket per id, `starts` the offset of each bucket, so a
    lookup probes every id of the queried buckets in one vectorised pass. Measured for 10k ids into
    10M random 64-bit ids on a 2-core AMD EPYC: 0.22-0.44 ms, against 4.7-5.7 ms for a binary search
    of the sorted ids and 0.18 ms for pandas' `Index.get_indexer` (khash), not a serving dependency.

    The index holds no copy of the ids (it probes the caller's array) and, where rows are the ids'
    own positions (a loaded version), no rows either: at 10M sparse ids it adds 4 bytes of slots
    and 4-8 bytes of bucket offsets per id (107 MB), and its build's transient peak is ~20 bytes
    per id. Every version a server holds during a hot swap carries one, and the build runs beside
    the live version: both count against the swap's memory bound.
    """

    ids: np.ndarray  # int64 ad ids, as given (shared with the caller, never copied)
    row_of: np.ndarray | None = field(default=None, repr=False)  # row of ids[i]; None: row i
    table: np.ndarray | None = field(default=None, repr=False)  # row of each id value (-1: none)
    slots: np.ndarray | None = field(default=None, repr=False)  # positions in ids, grouped by bucket
    starts: np.ndarray | None = field(default=None, repr=False)  # bucket b holds slots[starts[b]:starts[b + 1]]

    @classmethod
    def build(cls, ids: np.ndarray, rows: np.ndarray | None = None) -> IdIndex:
        """`rows[i]` is the row of `ids[i]` (None: row i). Raises ValueError on a duplicate id."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        largest = n if rows is None or n == 0 else max(n, int(np.max(rows)) + 1)
        offsets = np.int32 if largest < 2**31 else np.int64
        row_of = None if rows is None else np.asarray(rows).astype(offsets)
        if n == 0:
            return cls(ids, row_of)
        low, high = int(ids.min()), int(ids.max())
        if low >= 0 and high < max(DENSE_ID_FACTOR * n, DENSE_ID_MIN):
            table: np.ndarray = np.full(high + 1, -1, offsets)
            table[ids] = np.arange(n, dtype=offsets) if row_of is None else row_of
            if int(np.count_nonzero(table >= 0)) != n:
                raise ValueError("duplicate ad ids")
            return cls(ids, row_of, table)
        # Multiplying by an odd constant is a bijection of uint64, so sorting by the hash both groups
        # the ids by bucket (its top bits) and puts equal ids side by side. Every step is in place or
        # a 4-byte array: the build's transient peak is ~20 bytes per id (it runs beside a live version).
        hashed = ids.view(np.uint64) * _HASH
        order = np.argsort(hashed)
        slots = order.astype(offsets)
        del order
        hashed.sort()
        if np.any(hashed[1:] == hashed[:-1]):
            raise ValueError("duplicate ad ids")
        bits = max(1, (n - 1).bit_length())  # 2**bits >= n buckets: at most one id each on average
        np.right_shift(hashed, np.uint64(64 - bits), out=hashed)
        starts = np.empty((1 << bits) + 1, offsets)
        for b in range(0, 1 << bits, _BUCKET_CHUNK):  # bucket b starts at its first id: chunked, no int64 counts
            chunk = np.arange(b, min(b + _BUCKET_CHUNK, 1 << bits), dtype=np.uint64)
            starts[b : b + len(chunk)] = np.searchsorted(hashed, chunk)
        starts[-1] = n
        return cls(ids, row_of, None, slots, starts)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def rows(self) -> np.ndarray:
        """int64 row of each of `ids`."""
        return np.arange(len(self.ids), dtype=np.int64) if self.row_of is None else self.row_of.astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Memory the index holds beyond the ids it was given."""
        return sum(a.nbytes for a in (self.row_of, self.table, self.slots, self.starts) if a is not None)

    def lookup(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (int64) of the known ids and a mask of which ids are known (vectorised)."""
        if len(self.ids) == 0:
            return np.zeros(0, np.int64), np.zeros(len(ad_ids), bool)
        if self.table is not None:
            inside = (ad_ids >= 0) & (ad_ids < len(self.table))
            rows = np.full(len(ad_ids), -1, np.int64)
            rows[inside] = self.table[ad_ids[inside]]
            known = rows >= 0
            return rows[known], known
        assert self.slots is not None and self.starts is not None
        # Every slot of every query's bucket probed in one vectorised pass (one to two per query):
        # fewer, larger numpy calls than a pass per chain position.
        bucket = _buckets(ad_ids, int(len(self.starts) - 1).bit_length() - 1)
        first = self.starts[bucket].astype(np.int64)
        sizes = self.starts[bucket + 1] - first
        query = np.repeat(np.arange(len(ad_ids)), sizes)
        at = self.slots[np.arange(len(query)) + np.repeat(first - (np.cumsum(sizes) - sizes), sizes)]
        hit = self.ids[at] == ad_ids[query]
        pos = np.full(len(ad_ids), -1, np.int64)
        pos[query[hit]] = at[hit]
        known = pos >= 0
        found = pos[known]
        return (found if self.row_of is None else self.row_of[found].astype(np.int64)), known

    def changed(
        self, drop: np.ndarray, add_ids: np.ndarray | None = None, add_rows: np.ndarray | None = None
    ) -> IdIndex:
        """A new index without the `drop` ids and with `add_ids` -> `add_rows` (replacing any old row)."""
        add_ids = np.zeros(0, np.int64) if add_ids is None else add_ids
        add_rows = np.zeros(0, np.int64) if add_rows is None else add_rows
        keep = ~np.isin(self.ids, np.concatenate([drop, add_ids]))
        kept_rows = np.flatnonzero(keep) if self.row_of is None else self.row_of[keep]
        return IdIndex.build(np.concatenate([self.ids[keep], add_ids]), np.concatenate([kept_rows, add_rows]))


@dataclass(frozen=True)
class ServingVersion:
    """One model and the ads computed with it, ready to score, plus the deltas and pauses applied.

    Immutable: `with_delta` and `with_paused` return a new one (copy-on-write), which the
    follower swaps in whole. Upserted rows are appended to a shared row buffer past the end
    that older versions see, so a delta never copies the ad matrix (except when the buffer's
    spare capacity runs out) and never touches a row an in-flight request reads.
    """

    version: str
    bundle: Bundle
    index: IndexData
    storage: AdRows = field(repr=False)  # row buffer on the serving device; rows [0, n_rows) are written
    storage_ids: np.ndarray = field(repr=False)  # ad id of each buffer row
    n_rows: int
    bids: np.ndarray = field(repr=False)  # (n_rows,) bid of each row
    ads: IdIndex = field(repr=False)  # every ad of the version and its deltas
    ranked: IdIndex = field(repr=False)  # `ads` less the paused ones: what requests see
    user_rows: dict[str, int] = field(repr=False)  # replicated user store: user id -> row of index.users
    user_codec: UserRowCodec | None = field(default=None, repr=False)  # per-request store: its row layout
    user_buckets: int = 0  # per-request store: its hash buckets
    ann: Any = field(default=None, repr=False)  # faiss index over the base rows' heads, when published
    ann_pairs: Any = field(default=None, repr=False)  # faiss index over their head pairs (offline/ann.py)
    ann_rows: int = 0  # rows the ANN index covers (the base version's)
    delta_seq: int = 0  # highest store change number applied (deltas and pauses)
    delta_stream_id: str = "-"  # last applied entry of the version's delta stream
    deltas_applied: int = 0
    paused_seq: int = 0
    paused: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    history: HistoryLink | None = None  # which user sequence a click extends, and with which ad field
    storage_tokens: np.ndarray | None = field(default=None, repr=False)  # each buffer row's token in it

    def click_tokens(self, ad_ids: np.ndarray) -> np.ndarray:
        """The history tokens that clicks on `ad_ids` add (ads this version does not know add none)."""
        if self.storage_tokens is None or len(ad_ids) == 0:
            return np.zeros(0, np.int64)
        rows, _ = self.ads.lookup(ad_ids)
        tokens = self.storage_tokens[rows]
        return tokens[tokens > 0]

    @property
    def model_version(self) -> str:
        return self.bundle.version

    @functools.cached_property
    def rows(self) -> AdRows:
        """The written rows (a view of the buffer; rows no id maps to are dead)."""
        n = self.n_rows
        s = self.storage
        return AdRows(
            s.vectors[:n], None if s.scales is None else s.scales[:n], None if s.routes is None else s.routes[:n]
        )

    @property
    def row_ids(self) -> np.ndarray:
        return self.storage_ids[: self.n_rows]

    @functools.cached_property
    def live_rows(self) -> np.ndarray:
        """Rows a request can rank, ascending."""
        ranked = self.ranked
        return ranked.rows if ranked.row_of is None else np.sort(ranked.rows)

    @functools.cached_property
    def live_mask(self) -> np.ndarray:
        """bool (n_rows,): which rows a request can rank (an O(1) test per row)."""
        mask = np.zeros(self.n_rows, bool)
        mask[self.ranked.rows] = True
        return mask

    @property
    def live_ids(self) -> np.ndarray:
        return self.ranked.ids

    def lookup(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the rankable ids and a mask of which ids are rankable (unknown, removed and paused
        ids are not)."""
        return self.ranked.lookup(ad_ids)

    def with_delta(self, delta: AdDelta) -> ServingVersion:
        """This version with `delta` applied (upserts appended, removals and bid changes made).

        Raises:
            ArtifactError: the delta belongs to another version or model, or its rows do not fit.
        """
        if delta.base_version != self.version or delta.model_version != self.model_version:
            raise ArtifactError(
                f"delta {delta.seq} is for {delta.base_version} ({delta.model_version}), "
                f"not {self.version} ({self.model_version})"
            )
        storage, storage_ids, n = self.storage, self.storage_ids, self.n_rows
        k = len(delta.upsert_ids)
        if k:
            new = delta.upsert_rows
            assert new is not None  # AdDelta checks rows match ids
            if new.dtype != storage.dtype or new.vectors.shape[1:] != storage.vectors.shape[1:]:
                raise ArtifactError(
                    f"delta {delta.seq}: rows {tuple(new.vectors.shape[1:])} {new.dtype} do not match the "
                    f"version's {tuple(storage.vectors.shape[1:])} {storage.dtype}"
                )
            if (new.routes is None) != (storage.routes is None) or (new.scales is None) != (storage.scales is None):
                raise ArtifactError(f"delta {delta.seq}: rows and version disagree on routes or scales")
            tokens = None
            if self.history is not None:
                tokens = delta.upsert_sparse.get(self.history.ad_field, np.zeros(k, np.int64))
            storage, storage_ids, storage_tokens = _append(
                storage, storage_ids, self.storage_tokens, n, new.to(storage.device), delta.upsert_ids, tokens
            )
        else:
            storage_tokens = self.storage_tokens
        new_rows = np.arange(n, n + k, dtype=np.int64)
        bids = np.concatenate([self.bids, delta.upsert_bids.astype(np.float32)])
        if len(delta.bid_ids):
            rows, known = self.ads.lookup(delta.bid_ids)
            bids[rows] = delta.bid_values[known]
        ads = self.ads.changed(delta.remove_ids, delta.upsert_ids, new_rows)
        return dataclasses.replace(
            self,
            storage=storage,
            storage_ids=storage_ids,
            storage_tokens=storage_tokens,
            n_rows=n + k,
            bids=bids,
            ads=ads,
            ranked=ads.changed(self.paused) if len(self.paused) else ads,
            delta_seq=max(self.delta_seq, delta.seq),
            deltas_applied=self.deltas_applied + 1,
        )

    def with_paused(self, seq: int, paused: np.ndarray) -> ServingVersion:
        """This version with exactly `paused` (ad ids) paused, as of change number `seq`."""
        paused = np.unique(paused.astype(np.int64))
        return dataclasses.replace(
            self,
            ranked=self.ads.changed(paused) if len(paused) else self.ads,
            paused=paused,
            paused_seq=seq,
            delta_seq=max(self.delta_seq, seq),
        )


def _append(
    storage: AdRows,
    storage_ids: np.ndarray,
    storage_tokens: np.ndarray | None,
    n: int,
    new: AdRows,
    ids: np.ndarray,
    tokens: np.ndarray | None,
) -> tuple[AdRows, np.ndarray, np.ndarray | None]:
    """Writes `new` rows at [n, n + k) of the buffer, growing it (one copy) when it is full.

    Rows below n are never written, so versions that end at n keep reading what they read.
    """
    k = len(new)
    if n + k > len(storage):
        capacity = n + k + max(SPARE_ROWS_MIN, (n + k) // 8)

        def grown(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            out = torch.empty((capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[:n] = t[:n]
            return out

        vectors = grown(storage.vectors)
        assert vectors is not None
        storage = AdRows(vectors, grown(storage.scales), grown(storage.routes))
        grown_ids = np.empty(capacity, np.int64)
        grown_ids[:n] = storage_ids[:n]
        storage_ids = grown_ids
        if storage_tokens is not None:
            grown_tokens = np.zeros(capacity, np.int64)
            grown_tokens[:n] = storage_tokens[:n]
            storage_tokens = grown_tokens
    storage.vectors[n : n + k] = new.vectors
    if storage.scales is not None and new.scales is not None:
        storage.scales[n : n + k] = new.scales
    if storage.routes is not None and new.routes is not None:
        storage.routes[n : n + k] = new.routes
    storage_ids[n : n + k] = ids
    if storage_tokens is not None and tokens is not None:
        storage_tokens[n : n + k] = tokens
    return storage, storage_ids, storage_tokens


@dataclass(frozen=True)
class HistoryLink:
    """A user behaviour sequence that shares its vocabulary with a sparse ad field: a click on an
    ad appends that ad's value of the field (MovieLens: user_hist <- movie_id; the synthetic
    data: preferred_categories <- category)."""

    user_field: str
    ad_field: str


def history_link(bundle: Bundle) -> HistoryLink | None:
    """The first user sequence field whose vocabulary equals a sparse ad field's, if any."""
    schema = bundle.schema
    for u in schema.user_fields:
        if u.kind is not Kind.SEQUENCE or u.vocab is None:
            continue
        for a in schema.ad_fields:
            if a.kind is not Kind.SPARSE or a.vocab is None:
                continue
            if a.vocab != u.vocab and a.vocab not in bundle.vocabs:  # dropped by the server: not linked
                continue
            same = u.vocab == a.vocab or bundle.vocabs[u.vocab].tokens == bundle.vocabs[a.vocab].tokens
            if same:
                return HistoryLink(u.name, a.name)
    return None


def drop_unused_vocabularies(bundle: Bundle) -> Bundle:
    """`bundle` without the vocabularies a server never encodes with: requests carry user-side
    values only (their ads come encoded in the index), so a vocabulary that only ad fields use
    goes, unless a user history shares its tokens (`history_link`). 10M ad ids held as strings
    are ~650 MB per loaded version."""
    keep = {f.vocab for f in bundle.schema.user_fields if f.vocab}
    link = history_link(bundle)
    if link is not None:
        keep |= {f.vocab for f in bundle.schema.features if f.name == link.ad_field and f.vocab}
    for name in set(bundle.vocabs) - keep:
        del bundle.vocabs[name]
    return bundle


def load_version(directory: Path, device: str = "cpu", expected_model: str | None = None) -> ServingVersion:
    """Loads and checks one published version: checksums, model/index agreement, shapes.

    Raises:
        ArtifactError: anything that makes the version unservable, with the reason.
    """
    # The model first: parsing its vocabularies is the load's transient peak, best taken before
    # the index is in memory beside the live version.
    bundle = drop_unused_vocabularies(load_artifact(directory / MODEL_SUBDIR, device))
    index = load_index(directory)
    ann = pairs = None
    if (directory / ANN_FILE).exists():
        import faiss

        ann = faiss.read_index(str(directory / ANN_FILE))  # straight from the file: no second in-memory copy
        if (directory / ANN_PAIRS_FILE).exists():
            pairs = faiss.read_index(str(directory / ANN_PAIRS_FILE))
    return build_version(bundle, index, device, expected_model, ann, pairs)


def build_version(
    bundle: Bundle,
    index: IndexData,
    device: str = "cpu",
    expected_model: str | None = None,
    ann: Any = None,
    ann_pairs: Any = None,
) -> ServingVersion:
    """Checks that a model and an index belong together and prepares them for scoring."""
    version = str(index.manifest.get("version", "unversioned"))
    if index.manifest.get("model_version") != bundle.version:
        raise ArtifactError(
            f"version {version}: index was built by {index.manifest.get('model_version')} "
            f"but the model is {bundle.version}"
        )
    if expected_model is not None and bundle.version != expected_model:
        raise ArtifactError(f"version {version}: live model {bundle.version} is not the requested {expected_model}")
    ids = index.ad_ids
    try:
        ads = IdIndex.build(ids)  # row i is ids[i]'s: the index neither copies ids nor stores rows
    except ValueError:
        raise ArtifactError(f"version {version}: duplicate ad ids in the index") from None
    _check_shapes(bundle, index, version)
    if ann is not None and ann.ntotal != int(np.prod(index.rows.vectors.shape[:2])):
        raise ArtifactError(f"version {version}: ANN index has {ann.ntotal} vectors, expected ads x heads")
    if ann_pairs is not None and (ann is None or ann_pairs.ntotal != 2 * len(index.ad_ids)):
        raise ArtifactError(f"version {version}: the ANN pairs index does not match the ads (2 per ad)")
    fold_for_inference(bundle.model)  # BatchNorm folded into its Linear: fewer ops per request
    for spec in bundle.schema.user_fields:  # the maps requests encode with, before any request
        if spec.vocab is not None and spec.vocab in bundle.vocabs:
            bundle.vocabs[spec.vocab].prepare()
    link = history_link(bundle)
    tokens = index.ad_sparse.get(link.ad_field) if link is not None else None
    return ServingVersion(
        version=version,
        bundle=bundle,
        index=index,
        history=link if tokens is not None else None,
        storage_tokens=None if tokens is None else tokens.astype(np.int64, copy=False),
        storage=index.rows.to(device),
        storage_ids=ids,
        n_rows=len(ids),
        bids=index.bids,
        ads=ads,
        ranked=ads,
        user_rows={k: i for i, k in enumerate(index.user_ids)},
        user_codec=user_codec(index),
        user_buckets=int(index.manifest.get("user_store", {}).get("buckets", 0)),
        ann=ann,
        ann_pairs=ann_pairs,
        ann_rows=len(ids) if ann is not None else 0,
    )


def user_codec(index: IndexData) -> UserRowCodec | None:
    """The packed-row layout of a per-request user store, or None (the table is in memory)."""
    block = index.manifest.get("user_store", {})
    if block.get("mode") != "per-request":
        return None
    try:
        return UserRowCodec.from_json(block["codec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"version {index.manifest.get('version')}: bad user_store block: {exc}") from None


def probe_user(bundle: Bundle, index: IndexData, device: str = "cpu") -> Features:
    """Inputs of one user for checks and warm-up: the first stored user, or defaults."""
    if index.users.n_rows:
        return index.users.select(bundle.schema.user_fields).take(np.zeros(1, np.int64), device)
    defaults = default_features(bundle.schema.user_fields)
    return defaults if device == "cpu" else move_features(defaults, device)


def _check_shapes(bundle: Bundle, index: IndexData, version: str) -> None:
    """The user tower's output must be scorable against the stored rows."""
    users = index.users
    codec = user_codec(index)
    if codec is not None:
        present = {name for name, _, _ in codec.fixed} | {name for name, _ in codec.sequences}
    else:
        present = set(users.sparse) | set(users.dense) | set(users.sequences)
    missing = {f.name for f in bundle.schema.user_fields} - present
    if missing:
        raise ArtifactError(f"version {version}: user feature store lacks {sorted(missing)}")
    stored = index.rows
    if (codec is None and users.n_rows == 0) or len(stored) == 0:
        raise ArtifactError(f"version {version}: empty index or user store")
    device = next(bundle.model.parameters()).device  # the checks run where the model will serve
    with torch.inference_mode():
        ad_inputs = move_features(default_features(bundle.schema.ad_fields), device)
        vectors, routes = split_ads(bundle.model.encode_ad(ad_inputs))
        expected = tuple(vectors.shape[1:])
        if expected != tuple(stored.vectors.shape[1:]):
            raise ArtifactError(
                f"version {version}: the model encodes ads as {expected} but the index stores "
                f"{tuple(stored.vectors.shape[1:])}"
            )
        if (routes is None) != (stored.routes is None):
            raise ArtifactError(f"version {version}: the model and the index disagree on ad routes")
        user = bundle.model.encode_user(probe_user(bundle, index, str(device)))
        first, first_routes = split_ads(stored.take(torch.zeros(1, dtype=torch.int64)))
        row = join_ads(first.to(device), None if first_routes is None else first_routes.to(device))
        try:
            out = bundle.model.score(user, row)
        except RuntimeError as exc:
            raise ArtifactError(
                f"version {version}: model output {tuple(user.shape)} cannot score index rows "
                f"{tuple(stored.vectors.shape[1:])}: {exc}"
            ) from None
    if out.shape != (1,):
        raise ArtifactError(f"version {version}: score has shape {tuple(out.shape)}, expected (1,)")


class Store(Protocol):
    """Where published versions come from."""

    url: str
    events_channel: str | None

    def current(self) -> str | None: ...

    def identity(self, version: str) -> str | None:
        """A digest of `version`'s manifest as the store holds it now (None: no such version).

        Two publishes never share one: the manifest holds the creation time, the model version
        and every file's checksum. Replicas compare this, not names, which a store that lost its
        data can reissue.
        """
        ...

    def load(self, version: str, device: str = "cpu", expected_model: str | None = None) -> ServingVersion: ...

    def epoch(self) -> str | None:
        """The store's lifetime id: changes (or vanishes) when the store loses its data."""
        ...

    def deltas(self, version: str, after: str = "-") -> list[tuple[str, AdDelta]]:
        """`version`'s delta chain after stream entry `after`, oldest first."""
        ...

    def paused(self) -> tuple[int, np.ndarray]:
        """(change number of the last pause/resume, paused ad ids)."""
        ...

    def experiments(self) -> tuple[Experiment | None, ShadowConfig | None]:
        """The running A/B experiment and shadow candidate, if any (ValueError: invalid config)."""
        ...

    def set_config(self, config: Experiment | ShadowConfig) -> None:
        """Starts (or replaces) the experiment or the shadow for every replica."""
        ...

    def clear_config(self, kind: str) -> bool:
        """Ends the "experiment" or the "shadow"; True if one ran."""
        ...

    def version_bytes(self, version: str) -> int:
        """Bytes of a version's files (what holding it in memory costs, roughly)."""
        ...


def open_store(url: str) -> Store:
    """The store behind a URL (`local:DIR` or `redis://...`); ValueError for any other form."""
    return LocalStore(url) if parse_store_url(url).scheme == "local" else RedisStore(url)


class LocalStore:
    """A store directory written by `prerank export --store local:DIR`."""

    events_channel: str | None = None

    def __init__(self, url: str) -> None:
        _, location = parse_store_url(url)
        self.url = url
        self.root = Path(location)

    def current(self) -> str | None:
        """The live version name, or None when nothing is published."""
        return read_pointer(self.root)

    def identity(self, version: str) -> str | None:
        try:
            return hashlib.sha256((self.root / VERSIONS_DIR / version / "manifest.json").read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def load(self, version: str, device: str = "cpu", expected_model: str | None = None) -> ServingVersion:
        return load_version(self.root / VERSIONS_DIR / version, device, expected_model)

    def epoch(self) -> str | None:
        return None  # the directory is its own history

    def deltas(self, version: str, after: str = "-") -> list[tuple[str, AdDelta]]:
        return []  # deltas and pauses need a Redis store (their events reach every replica)

    def paused(self) -> tuple[int, np.ndarray]:
        return 0, np.zeros(0, np.int64)

    def experiments(self) -> tuple[Experiment | None, ShadowConfig | None]:
        return read_local_config(self.root)

    def set_config(self, config: Experiment | ShadowConfig) -> None:
        write_local_config(self.root, config)

    def clear_config(self, kind: str) -> bool:
        return clear_local_config(self.root, kind)

    def version_bytes(self, version: str) -> int:
        directory = self.root / VERSIONS_DIR / version
        if not directory.is_dir():
            raise ArtifactError(f"version {version} is not in the store")
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


class RedisStore:
    """A Redis store written by `prerank export --store redis://...`.

    Redis distributes versions; every replica downloads the live one once, verifies it and
    serves it from memory, so a Redis outage never fails a request.
    """

    def __init__(self, url: str, prefix: str | None = None) -> None:
        import redis

        self.url = url
        self.keys = RedisKeys(prefix) if prefix else RedisKeys()
        self.events_channel: str | None = self.keys.events
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)

    def _call(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` with Redis failures as ConnectionError (an OSError): the store is away."""
        import redis

        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise ConnectionError(f"redis: {exc}") from None

    def current(self) -> str | None:
        """GET of the pointer."""
        value = self._call(self.client.get, self.keys.current)
        return value.decode() if value else None

    def identity(self, version: str) -> str | None:
        """sha256 of the manifest key (one GET)."""
        raw = self._call(self.client.get, self.keys.manifest(version))
        return None if raw is None else hashlib.sha256(raw).hexdigest()

    def epoch(self) -> str | None:
        value = self._call(self.client.get, self.keys.epoch)
        return value.decode() if value else None

    def deltas(self, version: str, after: str = "-") -> list[tuple[str, AdDelta]]:
        return list(self._call(read_deltas, self.client, self.keys, version, after))

    def paused(self) -> tuple[int, np.ndarray]:
        seq, ids = self._call(read_paused, self.client, self.keys)
        return int(seq), ids

    def experiments(self) -> tuple[Experiment | None, ShadowConfig | None]:
        experiment, shadow = self._call(read_config, self.client, self.keys)
        return experiment, shadow

    def set_config(self, config: Experiment | ShadowConfig) -> None:
        self._call(write_config, self.client, self.keys, config)

    def clear_config(self, kind: str) -> bool:
        return bool(self._call(clear_config, self.client, self.keys, kind))

    def version_bytes(self, version: str) -> int:
        raw = self._call(self.client.get, self.keys.manifest(version))
        if raw is None:
            raise ArtifactError(f"version {version} is not in the store")
        return sum(int(f["size"]) for f in json.loads(raw).get("files", []))

    def load(self, version: str, device: str = "cpu", expected_model: str | None = None) -> ServingVersion:
        import redis

        with tempfile.TemporaryDirectory(prefix="prerank-load-") as tmp:
            try:
                fetch_redis_version(self.client.mget, self.keys, version, Path(tmp) / version)
            except redis.RedisError as exc:
                raise ConnectionError(f"redis: {exc}") from None
            return load_version(Path(tmp) / version, device, expected_model)
