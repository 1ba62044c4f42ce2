"""A schema-described log streamed from Parquet (or CSV) shards in bounded memory.

`load_streaming(schema_file)` reads a schema with `[splits]` (see `offline.data.tabular`) and
makes one pass over the training files to fit what needs fitting: the vocabulary of every field
that is not hashed (value counts merged batch by batch in Arrow), dense moments, and a reservoir
sample of each bucketed dense column. Nothing else is held: training batches are read, encoded and
dropped as training goes on, so memory is bounded by the shuffle buffer, not by the log.

Order within an epoch (`StreamingSplit.epoch`): the shard list is shuffled (seeded), then the row
groups within each shard, then rows through a buffer of `shuffle_buffer` rows (a bounded block
shuffle, not a global permutation). Under DDP each rank reads its own shards
(the shuffled list's every world-th shard), and the ranks stop together at the first step some
rank has no full batch for. Encoding is vectorised Arrow/numpy (no Python object per value):
hashed integer ids (`hash = "splitmix64"`), `index_in` lookups for fitted vocabularies, list
splitting for sequences. Encodings equal the in-memory loader's (`load_tabular`) row for row
(tested) where a user's fields are the same on all its rows; otherwise a streamed row keeps its own
fields (the in-memory loader takes each user's latest ones), and a missing sparse value is the
unknown id 0.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from models.features import Features, FeatureSchema, FeatureSpec, HashedVocabulary, Kind, Side, Vocabulary
from models.tables import FeatureTable
from offline.data.dataset import Batch, concat_tables, describe_splits, files_sha256
from offline.data.tabular import SPLITS, ColumnSpec, DenseStats, TableSpec, feature_specs, read_table_spec

__all__ = [
    "Snapshot",
    "StreamingDataset",
    "StreamingSplit",
    "encode_rows",
    "epoch_shards",
    "load_snapshot",
    "load_streaming",
]

log = logging.getLogger(__name__)

READ_ROWS = 1 << 16  # rows per record batch read from a file
DEFAULT_SHUFFLE_BUFFER = 1 << 18
RESERVOIR = 1 << 20  # values kept per bucketed dense column to fit its quantiles


def _is_parquet(path: Path) -> bool:
    return path.name.endswith((".parquet", ".pq"))


def _csv_types(spec: TableSpec) -> dict[str, pa.DataType]:
    """Column types a CSV is parsed with: numbers as float64, hashed integer ids as int64, the rest as
    Arrow strings (vocabulary tokens); typed up front so every block parses the same way."""
    types: dict[str, pa.DataType] = {spec.label.column: pa.float64()}
    for c in spec.features:
        if c.kind is Kind.DENSE:
            types[c.column] = pa.float64()
        elif c.hash == "splitmix64" and c.kind is Kind.SPARSE:
            types[c.column] = pa.int64()
        else:
            types[c.column] = pa.string()
    for column in (spec.timestamp, spec.bid):
        if column:
            types[column] = pa.float64()
    for column in (spec.user_key, spec.ad_key):
        types.setdefault(column, pa.string())
    return types


def _read_batches(
    path: Path, columns: list[str], spec: TableSpec, rng: np.random.Generator | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's rows as record batches of `columns`; row groups in a random order when `rng` is given."""
    if _is_parquet(path):
        handle = pq.ParquetFile(path)
        missing = sorted(set(columns) - set(handle.schema_arrow.names))
        if missing:
            raise ValueError(f"{spec.name}: columns {missing} not in {path.name}")
        groups = list(range(handle.num_row_groups))
        if rng is not None:
            groups = [int(g) for g in rng.permutation(len(groups))]
        for group in groups:
            yield from handle.iter_batches(batch_size=READ_ROWS, row_groups=[group], columns=columns)
        return
    types = _csv_types(spec)
    options = pcsv.ConvertOptions(
        include_columns=columns,
        column_types={c: types[c] for c in columns},
        strings_can_be_null=True,
    )
    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 24), convert_options=options)
    header = set(reader.schema.names)
    missing = sorted(set(columns) - header)
    if missing:
        raise ValueError(f"{spec.name}: columns {missing} not in {path.name}")
    yield from reader


def _rows_in(path: Path, spec: TableSpec) -> int:
    if _is_parquet(path):
        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(b.num_rows for b in _read_batches(path, [spec.label.column], spec))


def _as_tokens(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Values as the strings vocabularies hold (integral floats as integers, like the in-memory loader)."""
    if pa.types.is_floating(array.type):
        present = pc.drop_null(array)
        if len(present) and pc.all(pc.equal(present, pc.floor(present))).as_py():
            array = pc.cast(array, pa.int64())
    return pc.cast(array, pa.string())


def _labels(table: pa.Table | pa.RecordBatch, spec: TableSpec) -> np.ndarray:
    values = pc.cast(table.column(spec.label.column), pa.float64()).to_numpy(zero_copy_only=False)
    if np.isnan(values).any():
        raise ValueError(f"{spec.name}: label column {spec.label.column!r} has missing values")
    if spec.label.threshold is not None:
        return (values >= spec.label.threshold).astype(np.float32)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{spec.name}: label {spec.label.column!r} must be 0/1 (or give label.threshold)")
    return values.astype(np.float32)


def _integers(array: pa.Array, column: str) -> np.ndarray:
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_string(array.type)):
        raise ValueError(f"column {column!r}: splitmix64-hashed ids must be integers, got {array.type}")
    try:
        ints = pc.cast(array, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ValueError(f"column {column!r}: splitmix64-hashed ids must be integers") from None
    return ints.to_numpy(zero_copy_only=False) if ints.null_count == 0 else pc.fill_null(ints, 0).to_numpy()


class _Encoder:
    """Encodes Arrow columns to model ids, holding each fitted vocabulary's tokens as an Arrow array."""

    def __init__(self, vocabs: dict[str, Vocabulary]) -> None:
        self.vocabs = vocabs
        self._tokens: dict[str, pa.Array] = {}

    def ids(self, c: ColumnSpec, array: pa.Array) -> np.ndarray:
        vocab = self.vocabs[c.vocab]
        if isinstance(vocab, HashedVocabulary) and vocab.hash == "splitmix64":
            ids = vocab.encode_integers(_integers(array, c.column))
            return np.where(pc.is_null(array).to_numpy(zero_copy_only=False), 0, ids) if array.null_count else ids
        tokens = _as_tokens(array)
        if isinstance(vocab, HashedVocabulary):  # blake2b: one value at a time
            return vocab.encode(tokens.to_pylist())
        if c.vocab not in self._tokens:
            self._tokens[c.vocab] = pa.array(vocab.tokens, pa.string())
        index = pc.index_in(tokens, value_set=self._tokens[c.vocab])
        return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    def sequence(self, c: ColumnSpec, f: FeatureSpec, array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        lists = pc.split_pattern(pc.fill_null(pc.cast(array, pa.string()), ""), pattern=c.separator)
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        ids = self.ids(c, lists.flatten())
        row = np.repeat(np.arange(len(array)), np.diff(offsets))
        keep = ids > 0  # unknown and rare tokens are dropped (as the server does)
        ids, row = ids[keep], row[keep]
        lengths = np.bincount(row, minlength=len(array))
        if f.max_len is not None and len(ids):  # then the most recent max_len kept
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            position = np.arange(len(ids)) - starts[row]
            keep = position < f.max_len if f.newest_first else position >= lengths[row] - f.max_len
            ids, row = ids[keep], row[keep]
            lengths = np.bincount(row, minlength=len(array))
        out = np.zeros(len(array) + 1, np.int64)
        np.cumsum(lengths, out=out[1:])
        return ids.astype(np.int64), out


def encode_rows(
    table: pa.Table | pa.RecordBatch,
    columns: list[ColumnSpec],
    specs: dict[str, FeatureSpec],
    encoder: _Encoder,
) -> FeatureTable:
    """The named fields of every row of `table`, encoded as `offline.data.tabular` encodes them."""
    out = FeatureTable(table.num_rows)
    for c in columns:
        f = specs[c.name]
        array = table.column(c.column)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if f.boundaries is not None:
            out.sparse[c.name] = f.bucketize(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False))
        elif c.kind is Kind.DENSE:
            values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
            out.dense[c.name] = np.nan_to_num(values).astype(np.float32)
        elif c.kind is Kind.SPARSE:
            out.sparse[c.name] = encoder.ids(c, array)
        else:
            out.sequences[c.name] = encoder.sequence(c, f, array)
    return out


@dataclass
class _Fitter:
    """Vocabulary counts, dense moments and reservoirs, accumulated batch by batch."""

    spec: TableSpec
    rng: np.random.Generator
    counts: dict[str, list[pa.Table]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    moments: dict[str, list[float]] = field(default_factory=dict)
    reservoirs: dict[str, np.ndarray] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    positives: float = 0.0

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self.positives += float(_labels(batch, self.spec).sum())
        for c in self.spec.features:
            if c.kind is Kind.DENSE:
                self._dense(c, pc.cast(batch.column(c.column), pa.float64()).to_numpy(zero_copy_only=False))
            elif c.hash_buckets is None:
                array = batch.column(c.column)
                if c.kind is Kind.SEQUENCE:
                    tokens = pc.split_pattern(pc.drop_null(pc.cast(array, pa.string())), pattern=c.separator).flatten()
                    tokens = pc.filter(tokens, pc.not_equal(tokens, ""))
                else:
                    tokens = pc.drop_null(_as_tokens(array))
                self._count(c.vocab, tokens)

    def _count(self, vocab: str, tokens: pa.Array) -> None:
        counted = pc.value_counts(tokens)
        part = pa.table({"token": counted.field("values"), "n": pc.cast(counted.field("counts"), pa.int64())})
        self.counts.setdefault(vocab, []).append(part)
        self.pending[vocab] = self.pending.get(vocab, 0) + part.num_rows
        if self.pending[vocab] > 4 * RESERVOIR:  # merge: memory stays O(distinct tokens)
            self.counts[vocab] = [self._merged(vocab)]
            self.pending[vocab] = self.counts[vocab][0].num_rows

    def _merged(self, vocab: str) -> pa.Table:
        merged = pa.concat_tables(self.counts[vocab]).group_by("token").aggregate([("n", "sum")])
        return merged.rename_columns(["token", "n"])

    def _dense(self, c: ColumnSpec, x: np.ndarray) -> None:
        filled = np.nan_to_num(x)
        m = self.moments.setdefault(c.column, [0.0, 0.0, 0.0])
        m[0] += len(filled)
        m[1] += float(filled.sum())
        m[2] += float(np.square(filled).sum())
        if c.buckets is None:
            return
        present = x[~np.isnan(x)]
        kept, seen = self.reservoirs.get(c.column, np.zeros(0)), self.seen.get(c.column, 0)
        if len(kept) + len(present) <= RESERVOIR:
            kept = np.concatenate([kept, present])
        else:  # reservoir sampling (Algorithm R, vectorised per batch)
            free = max(RESERVOIR - len(kept), 0)
            kept = np.concatenate([kept, present[:free]])
            rest = present[free:]
            slots = self.rng.integers(0, seen + free + np.arange(1, len(rest) + 1))
            hit = slots < RESERVOIR
            kept[slots[hit]] = rest[hit]
        self.reservoirs[c.column] = kept
        self.seen[c.column] = seen + len(present)

    def vocabularies(self) -> dict[str, Vocabulary]:
        vocabs: dict[str, Vocabulary] = {}
        for c in self.spec.features:
            if c.kind is Kind.DENSE or c.vocab in vocabs:
                continue
            if c.hash_buckets is not None:
                vocabs[c.vocab] = HashedVocabulary(c.hash_buckets, c.hash)
                continue
            if c.vocab not in self.counts:
                vocabs[c.vocab] = Vocabulary([""])
                continue
            merged = self._merged(c.vocab)
            kept = merged.filter(pc.greater_equal(merged["n"], c.min_count))["token"]
            tokens = pc.take(kept, pc.sort_indices(kept)).to_pylist()
            vocabs[c.vocab] = Vocabulary(tokens or [""])
        return vocabs

    def dense_stats(self) -> dict[str, DenseStats]:
        out = {}
        for c in self.spec.features:
            if c.kind is not Kind.DENSE:
                continue
            n, s, ss = self.moments.get(c.column, [0.0, 0.0, 0.0])
            mean = s / n if n else 0.0
            std = float(np.sqrt(max(ss / n - mean * mean, 0.0))) if n else 0.0
            out[c.column] = DenseStats(mean, std, self.reservoirs.get(c.column, np.zeros(0)))
        return out


@dataclass
class StreamingSplit:
    """One split's files, read batch by batch; same interface as the in-memory `Split`."""

    name: str
    files: tuple[Path, ...]
    rows: int
    spec: TableSpec
    columns: list[ColumnSpec]
    specs: dict[str, FeatureSpec]
    encoder: _Encoder
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    _label_cache: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.rows

    @property
    def read_columns(self) -> list[str]:
        return list(dict.fromkeys([self.spec.label.column, *(c.column for c in self.columns)]))

    @property
    def labels(self) -> np.ndarray:
        """Every row's label, in file order (one column read; 4 bytes a row)."""
        if self._label_cache is None:
            parts = [
                _labels(b, self.spec) for f in self.files for b in _read_batches(f, [self.spec.label.column], self.spec)
            ]
            self._label_cache = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return self._label_cache

    def _encoded(self, table: pa.Table | pa.RecordBatch) -> tuple[FeatureTable, np.ndarray]:
        return encode_rows(table, self.columns, self.specs, self.encoder), _labels(table, self.spec)

    def batches(self, batch_size: int, device: str = "cpu") -> Iterator[Features]:
        """Model inputs for every row in file order, `batch_size` rows at a time (for inference)."""
        for table in self._blocks(self.files, None, batch_size):
            encoded, _ = self._encoded(table)
            for start in range(0, table.num_rows, batch_size):
                yield encoded.take(np.arange(start, min(start + batch_size, table.num_rows)), device)

    def _blocks(
        self, files: tuple[Path, ...] | list[Path], rng: np.random.Generator | None, rows: int
    ) -> Iterator[pa.Table]:
        """Tables of at least `rows` rows (the last may be shorter) read from `files` in order."""
        held: list[pa.RecordBatch] = []
        count = 0
        for path in files:
            for batch in _read_batches(path, self.read_columns, self.spec, rng):
                held.append(batch)
                count += batch.num_rows
                if count >= rows:
                    yield pa.Table.from_batches(held)
                    held, count = [], 0
        if held:
            yield pa.Table.from_batches(held)

    def epoch(
        self,
        rng: np.random.Generator,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        negative_rate: float = 1.0,
        device: str = "cpu",
    ) -> Iterator[Batch]:
        """One pass over this rank's shards in shuffled order: shards, row groups, then a buffer
        (`shuffle_buffer` 0: the log's own order, for time-ordered training).

        Each step takes batch_size // world rows on every rank; with world > 1 the ranks agree
        (one all-reduce of a flag per step) to stop at the first step any rank cannot fill.
        """
        per_rank = batch_size // world if world > 1 else batch_size
        if per_rank < 1:
            raise ValueError(f"batch_size {batch_size} is smaller than the world size {world}")
        shuffle = self.shuffle_buffer > 0
        mine = epoch_shards(self.files, rng if shuffle else None, rank, world)
        local = np.random.default_rng(rng.integers(1 << 62) + rank)
        carry: tuple[FeatureTable, np.ndarray] | None = None

        def steps() -> Iterator[tuple[Features, torch.Tensor]]:
            nonlocal carry
            for table in self._blocks(mine, local if shuffle else None, max(self.shuffle_buffer, per_rank)):
                encoded, labels = self._encoded(table)
                keep = np.arange(table.num_rows)
                if negative_rate < 1.0:  # negative down-sampling, drawn anew each epoch
                    keep = keep[(labels > 0.5) | (local.random(len(keep)) < negative_rate)]
                perm = keep[local.permutation(len(keep))] if shuffle else keep
                if carry is not None:  # the last buffer's partial batch goes first
                    encoded, labels, perm = _join(carry[0], carry[1], encoded, labels, perm)
                    carry = None
                full = len(perm) // per_rank * per_rank
                for start in range(0, full, per_rank):
                    rows = perm[start : start + per_rank]
                    yield encoded.take(rows, device), torch.from_numpy(labels[rows]).to(device)
                if full < len(perm):
                    rest = perm[full:]
                    carry = (encoded.take_rows(rest), labels[rest])
            if carry is not None and world == 1:  # the epoch's tail (every rank drops it under DDP)
                yield carry[0].take(np.arange(carry[0].n_rows), device), torch.from_numpy(carry[1]).to(device)

        for feats, labels in _together(steps(), world):
            yield Batch(feats, labels, None, len(labels) * world)


def epoch_shards(files: tuple[Path, ...], rng: np.random.Generator | None, rank: int, world: int) -> list[Path]:
    """The shards rank `rank` of `world` reads this epoch: every world-th of the seeded shuffle of
    all shards (the same shuffle on every rank, so the ranks' shards are disjoint and cover all);
    in file order when `rng` is None."""
    if world > 1 and len(files) < world:
        raise ValueError(f"{len(files)} shards cannot give each of {world} ranks its own (write more, smaller shards)")
    order = [files[i] for i in rng.permutation(len(files))] if rng is not None else list(files)
    return order[rank::world]


def _join(
    head: FeatureTable, head_labels: np.ndarray, table: FeatureTable, labels: np.ndarray, perm: np.ndarray
) -> tuple[FeatureTable, np.ndarray, np.ndarray]:
    """`head`'s rows followed by `table`'s rows `perm`, as one table with positions 0..n-1."""
    body = table.take_rows(perm)
    joined = concat_tables([head, body])
    return joined, np.concatenate([head_labels, labels[perm]]), np.arange(joined.n_rows)


def _together(steps: Iterator[tuple[Features, torch.Tensor]], world: int) -> Iterator[tuple[Features, torch.Tensor]]:
    """The steps, stopping on every rank at the first one some rank has no batch for."""
    if world == 1:
        yield from steps
        return
    import torch.distributed as dist

    for step in steps:
        flag = torch.ones(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if flag.item() < 1:
            return
        yield step
    flag = torch.zeros(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)


@dataclass
class StreamingDataset:
    """A log trained on from its shards: schema, vocabularies, and the three splits as streams."""

    name: str
    protocol: str
    schema: FeatureSchema
    vocabs: dict[str, Vocabulary]
    train: StreamingSplit
    valid: StreamingSplit
    test: StreamingSplit
    checksum: str
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return describe_splits(self, self.info["train_positive_rate"])


def load_streaming(
    schema_file: Path,
    data_dir: Path | None = None,
    seed: int = 1023,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> StreamingDataset:
    """The schema's log as streams; one pass over the training files fits vocabularies and dense stats."""
    spec = read_table_spec(schema_file, data_dir)
    if not spec.split_files:
        raise ValueError(
            f"{schema_file}: streaming reads a log split into files: give [splits] train/valid/test instead of files"
        )
    fitter = _Fitter(spec, np.random.default_rng(seed))
    fitted = [c.column for c in spec.features if c.hash_buckets is None]  # hashed ids need no pass
    fit_columns = list(dict.fromkeys([spec.label.column, *fitted]))
    for path in spec.split_files["train"]:
        for batch in _read_batches(path, fit_columns, spec):
            fitter.add(batch)
    if fitter.rows == 0:
        raise ValueError(f"{spec.name}: the training files hold no rows")
    vocabs = fitter.vocabularies()
    specs = feature_specs(spec, vocabs, fitter.dense_stats())
    columns = [c for c in spec.features if c.side in (Side.USER, Side.CONTEXT)] + [
        c for c in spec.features if c.side is Side.AD
    ]
    encoder = _Encoder(vocabs)

    def split(name: str, rows: int | None = None) -> StreamingSplit:
        files = spec.split_files[name]
        n = rows if rows is not None else sum(_rows_in(f, spec) for f in files)
        return StreamingSplit(name, files, n, spec, columns, specs, encoder, shuffle_buffer)

    used = {f.vocab for f in specs.values() if f.vocab}
    schema = FeatureSchema(
        tuple(specs[c.name] for c in spec.features), {k: len(v) for k, v in vocabs.items() if k in used}
    )
    shards = len(spec.split_files["train"])
    log.info("%s: %d training rows in %d shards; vocabularies fitted", spec.name, fitter.rows, shards)
    return StreamingDataset(
        name=spec.name,
        protocol="time" if spec.timestamp else "random",
        schema=schema,
        vocabs=vocabs,
        train=split("train", fitter.rows),
        valid=split("valid"),
        test=split("test"),
        checksum=files_sha256(spec.files),
        info={
            "schema_file": Path(schema_file).name,
            "schema_sha256": hashlib.sha256(Path(schema_file).read_bytes()).hexdigest(),
            "split": "files",
            "streamed": True,
            "shuffle_buffer": shuffle_buffer,
            "shards": {name: len(spec.split_files[name]) for name in SPLITS},
            "train_positive_rate": fitter.positives / fitter.rows,
        },
    )


MERGE_ROWS = 1 << 24  # rows gathered before the latest-row tables are merged (bounds the pending rows)


@dataclass
class Snapshot:
    """What an export publishes, built from a log's shards without loading the log: each user's
    latest user and context fields, each ad's latest ad fields and mean bid (the same snapshot as
    `Dataset`'s serving fields; files are read in split order, train, valid, test, and each file in
    its row order, so a log whose files are in time order gives the latest rows)."""

    name: str
    protocol: str
    schema: FeatureSchema
    checksum: str
    user_keys: list[str]
    users: FeatureTable
    ad_ids: np.ndarray
    ads: FeatureTable
    ad_bids: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


class _Latest:
    """The latest row per key of a stream of tables (Arrow's ordered `last` aggregation, merged
    every MERGE_ROWS rows, so memory is the distinct keys plus one merge's rows)."""

    def __init__(self, key: str, columns: list[str], sums: Sequence[str] = ()) -> None:
        self.key, self.columns, self.sums = key, [c for c in columns if c != key], list(sums)
        self.merged: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        part = table.select([self.key, *self.columns])
        for column in self.sums:  # bids: a sum and a count per key, combined across merges
            values = pc.cast(table.column(column), pa.float64())
            part = part.append_column(f"{column}__sum", pc.fill_null(values, 0.0))
            part = part.append_column(f"{column}__n", pc.cast(pc.is_valid(values), pa.int64()))
        self.pending.append(part)
        self.rows += part.num_rows
        if self.rows >= MERGE_ROWS:
            self._merge()

    def _merge(self) -> None:
        parts = ([self.merged] if self.merged is not None else []) + self.pending
        if not parts:
            return
        table = pa.concat_tables(parts, promote_options="permissive")
        last = pc.ScalarAggregateOptions(skip_nulls=False)
        aggregations: list[Any] = [(c, "last", last) for c in self.columns]
        for column in self.sums:
            aggregations += [(f"{column}__sum", "sum"), (f"{column}__n", "sum")]
        grouped = table.group_by(self.key, use_threads=False).aggregate(aggregations)
        # "segment_last" -> "segment", "bid__sum_sum" -> "bid__sum": the next merge reads its own output
        names = [n if n == self.key else n.rsplit("_", 1)[0] for n in grouped.column_names]
        self.merged = grouped.rename_columns(names)
        self.pending, self.rows = [], 0

    def table(self) -> pa.Table:
        self._merge()
        assert self.merged is not None
        return self.merged.sort_by(self.key)


def _whole_numbers(keys: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Keys as int64 when every one is a whole number (CSV keys arrive as text), else None."""
    if keys.null_count:
        return None
    try:  # integers and integer text exactly (64-bit ids), then whole floats such as "5.0"
        return np.array(pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False), np.int64)  # a writable copy
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        values = pc.cast(keys, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if np.isnan(values).any() or (values % 1 != 0).any():
        return None
    return values.astype(np.int64)


def load_snapshot(
    schema_file: Path, data_dir: Path | None, schema: FeatureSchema, vocabs: dict[str, Vocabulary]
) -> Snapshot:
    """The serving snapshot of a log in `[splits]` shards, encoded with an artifact's schema and
    vocabularies (no fitting pass: the artifact's encoding is the one published)."""
    spec = read_table_spec(schema_file, data_dir)
    if not spec.split_files:
        raise ValueError(f"{schema_file}: a streamed export reads a log split into files ([splits])")
    specs = {f.name: f for f in schema.features}
    missing = sorted(set(specs) - {c.name for c in spec.features})
    if missing:
        raise ValueError(f"{schema_file}: the artifact reads fields the schema file does not have: {missing}")
    user_cols = [c for c in spec.features if c.name in specs and c.side in (Side.USER, Side.CONTEXT)]
    ad_cols = [c for c in spec.features if c.name in specs and c.side is Side.AD]
    users = _Latest(spec.user_key, list(dict.fromkeys(c.column for c in user_cols)))
    ads = _Latest(spec.ad_key, list(dict.fromkeys(c.column for c in ad_cols)), [spec.bid] if spec.bid else [])
    read = list(dict.fromkeys([spec.user_key, spec.ad_key, *(c.column for c in user_cols + ad_cols)]))
    read += [spec.bid] if spec.bid and spec.bid not in read else []
    for name in SPLITS:
        for path in spec.split_files[name]:
            for batch in _read_batches(path, read, spec):
                table = pa.Table.from_batches([batch])
                users.add(table)
                ads.add(table)
    encoder = _Encoder(vocabs)
    user_table, ad_table = users.table(), ads.table()
    numeric = _whole_numbers(ad_table.column(spec.ad_key))
    if numeric is not None and (len(numeric) == 0 or numeric.min() >= 0):  # as the in-memory loader decides
        ad_ids, ad_id_source = numeric, "column"
    else:  # string keys are served by their position in the ad table, 1..N
        ad_ids, ad_id_source = np.arange(1, ad_table.num_rows + 1, dtype=np.int64), "row number"
    bids = np.ones(ad_table.num_rows, np.float32)
    if spec.bid:
        total = ad_table.column(f"{spec.bid}__sum").to_numpy()
        count = ad_table.column(f"{spec.bid}__n").to_numpy()
        bids = np.where(count > 0, total / np.maximum(count, 1), 1.0).astype(np.float32)
    log.info("snapshot of %s: %d users, %d ads", spec.name, user_table.num_rows, ad_table.num_rows)
    return Snapshot(
        name=spec.name,
        protocol="time" if spec.timestamp else "random",
        schema=schema,
        checksum=files_sha256(spec.files),
        user_keys=_as_tokens(user_table.column(spec.user_key)).to_pylist(),
        users=encode_rows(user_table, user_cols, specs, encoder),
        ad_ids=ad_ids,
        ads=encode_rows(ad_table, ad_cols, specs, encoder),
        ad_bids=bids,
        info={"ad_ids_from": ad_id_source, "streamed": True},
    )
