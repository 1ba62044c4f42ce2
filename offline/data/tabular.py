"""Bring-your-own data: a dataset described by a schema file, read from CSV or Parquet.

A schema file (TOML, or JSON with the same keys) names the files, the label, the user and ad
key columns, and every feature column with its side (user / ad / context) and kind
(sparse / dense / sequence). Example (`offline/data/schemas/taobao-display-ad.toml`)::

    name = "taobao-display-ad"
    files = ["raw_sample_head10k.csv.gz"]    # relative to --data-dir, else to this file
    user_key = "user"                        # one user per distinct value (the user feature store key)
    ad_key = "adgroup_id"                    # integer ad ids are served as they are
    label = { column = "clk" }               # 0/1; or { column = "rating", threshold = 4 }
    timestamp = "time_stamp"                 # optional: time-ordered split instead of random
    # bid = "bid"                            # optional: mean bid per ad is published with the index

    [[features]]
    column = "user"                          # `name` defaults to the column
    side = "user"
    kind = "sparse"
    static = true                            # HIT's generators read static fields

    [[features]]
    column = "pid"
    side = "context"
    kind = "sparse"

Sequence columns hold ids joined by `separator` (default "|"). Vocabularies are fitted on the
training rows only (unseen values map to id 0), dense columns have missing values filled with 0.
A huge integer id space is hashed instead: `hash_buckets = 4194304, hash = "splitmix64"`
(vectorised; the default hash, blake2b, takes any value but one at a time).

Rows are split 80/20 into train+valid and test (randomly with `split_seed`, or by time when
`timestamp` is given: the latest 20% are the test rows), and 1/8 of train+valid is the
validation set: a seeded random 1/8, or with `valid = "latest"` (time-ordered logs) the latest
1/8, which validates the way the test rows test, after every training row. A log already split
into files names them instead of `files` (globs allowed; this is what `prerank train --stream`
reads shard by shard)::

    [splits]
    train = ["train/*.parquet"]
    valid = ["valid/*.parquet"]
    test = ["test/*.parquet"]
 The user side of a row is its user's fields plus the row's context fields; the
published user store keeps each user's latest row.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from models.features import FeatureSchema, FeatureSpec, HashedVocabulary, Kind, Side, Vocabulary
from models.tables import FeatureTable
from offline.data.dataset import Dataset, Split, files_sha256

__all__ = [
    "SCHEMA_SUFFIXES",
    "SPLITS",
    "ColumnSpec",
    "DenseStats",
    "TableSpec",
    "feature_specs",
    "load_tabular",
    "read_table_spec",
    "split_rows",
]

SCHEMA_SUFFIXES = (".toml", ".json")
TEST_FRACTION = 0.2
VALID_FRACTION = 0.125  # of the train+valid rows, i.e. 10% of all rows


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One `[[features]]` entry of a schema file."""

    column: str
    name: str = ""  # defaults to the column
    side: Side
    kind: Kind
    static: bool = False
    separator: str = "|"
    vocab: str = ""  # the vocabulary (and embedding table) it shares; defaults to its name
    min_count: int = Field(1, ge=1)
    hash_buckets: int | None = Field(None, ge=1)
    hash: Literal["blake2b", "splitmix64"] = "blake2b"
    dim: int | None = Field(None, ge=1)
    pooling: Literal["mean", "sum", "recency"] = "mean"
    max_len: int | None = Field(None, ge=1)
    newest_first: bool = False
    normalize: bool = False
    buckets: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _kind_keys(self) -> ColumnSpec:
        given = self.model_fields_set
        only = {
            Kind.DENSE: {"normalize", "buckets"},
            Kind.SEQUENCE: {"separator", "pooling", "max_len", "newest_first"},
        }
        embedded = {"vocab", "min_count", "hash_buckets", "hash", "dim"}
        for kind, keys in only.items():
            if self.kind is not kind and given & keys:
                raise ValueError(f"{sorted(given & keys)} apply to {kind.value} features only")
        if self.kind is Kind.DENSE and given & (embedded - {"dim"}):
            raise ValueError(f"{sorted(given & embedded)} apply to sparse and sequence features only")
        if self.kind is Kind.DENSE and "dim" in given and self.buckets is None:
            raise ValueError("dim applies to embedded features (sparse, sequence, or dense with buckets)")
        if self.normalize and self.buckets is not None:
            raise ValueError("a dense feature is either normalized or bucketed, not both")
        if self.pooling == "recency" and self.max_len is None:
            raise ValueError("recency pooling needs max_len (one learned weight per position)")
        if "hash" in given and self.hash_buckets is None:
            raise ValueError("hash applies to hashed fields only (give hash_buckets)")
        if self.hash_buckets is not None and self.min_count != 1:
            raise ValueError("hash_buckets and min_count exclude each other (a hashed field has no fitted vocabulary)")
        object.__setattr__(self, "name", self.name or self.column)
        object.__setattr__(self, "vocab", self.vocab or self.name)
        return self


class LabelSpec(_Strict):
    column: str
    threshold: float | None = None


SPLITS = ("train", "valid", "test")


class SplitFiles(_Strict):
    """`[splits]`: the files (or globs) of each split of a log that comes split already."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TableSpec(_Strict):
    """A parsed schema file; `files` (and `splits`) are resolved against the data directory.

    After `read_table_spec`, `split_files` maps each split to its sorted, existing files when the
    schema has `[splits]`, and `files` lists them all (train, valid, test).
    """

    name: str = ""
    files: tuple[Path, ...] = ()
    splits: SplitFiles | None = None
    _split_files: dict[str, tuple[Path, ...]] = PrivateAttr(default_factory=dict)

    @property
    def split_files(self) -> dict[str, tuple[Path, ...]]:
        """Each split's files (sorted glob matches), when the schema has `[splits]`; else empty."""
        return self._split_files

    user_key: str
    ad_key: str
    label: LabelSpec
    features: tuple[ColumnSpec, ...]
    timestamp: str | None = None
    bid: str | None = None
    #: which train+valid rows validate: "random" (a seeded 1/8) or "latest" (the latest 1/8 in time,
    #: out-of-time validation: needs `timestamp`)
    valid: Literal["random", "latest"] = "random"

    @field_validator("files", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        if isinstance(value, str):  # `files = "a.csv"` is one file, not a list of letters
            return [value]
        return value

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> TableSpec:
        if bool(self.files) == (self.splits is not None):
            raise ValueError("give either files (split here) or [splits] (train/valid/test files), not both or neither")
        if self.valid == "latest" and (self.timestamp is None or self.splits is not None):
            raise ValueError('valid = "latest" needs a timestamp column and files split here (not [splits])')
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature names must be unique, repeated: {duplicated}")
        for side in (Side.USER, Side.AD):
            if not any(f.side is side for f in self.features):
                raise ValueError(f"needs at least one {side.value} feature")
        by_vocab: dict[str, list[ColumnSpec]] = {}
        for f in self.features:
            if f.kind is not Kind.DENSE:
                by_vocab.setdefault(f.vocab, []).append(f)
            elif f.buckets is not None and f.vocab in {g.vocab for g in self.features if g is not f}:
                raise ValueError(f"{f.name}: a bucketed dense feature cannot share a vocabulary")
        for vocab, fields in by_vocab.items():
            for key in ("min_count", "hash_buckets", "hash", "dim"):
                if len({getattr(f, key) for f in fields}) > 1:
                    raise ValueError(f"the fields of vocab {vocab!r} ({[f.name for f in fields]}) must agree on {key}")
        return self

    @property
    def columns(self) -> set[str]:
        """Every column the schema reads."""
        cols = {self.user_key, self.ad_key, self.label.column, *(f.column for f in self.features)}
        return cols | {c for c in (self.timestamp, self.bid) if c}


def _one_line(where: str, raw: dict[str, Any], exc: ValidationError) -> str:
    """The first validation error as one line: where, which key (and which feature's column), what."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if len(loc) > 1 and loc[0] == "features" and isinstance(loc[1], int):
        features = raw.get("features")
        entry = features[loc[1]] if isinstance(features, list) and loc[1] < len(features) else None
        if isinstance(entry, dict) and "column" in entry:
            key += f" (column {entry['column']!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if first["type"] == "missing":
        return f"{where}: missing required key: {key}{more}"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key: {key}{more}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] != "value_error":
        msg += f", got {first['input']!r}"
    return f"{where}: {key + ': ' if key else ''}{msg}{more}"


def read_table_spec(path: Path, data_dir: Path | None = None) -> TableSpec:
    """Parses and checks a schema file; data files resolve against `data_dir` or the file's folder."""
    path = Path(path)
    if path.suffix not in SCHEMA_SUFFIXES:
        raise ValueError(f"{path}: a schema file must end in {' or '.join(SCHEMA_SUFFIXES)}")
    text = path.read_text()
    try:
        raw: dict[str, Any] = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a schema is a table of keys, got {type(raw).__name__}")
    try:
        spec = TableSpec.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_one_line(str(path), raw, exc)) from None
    base = Path(data_dir) if data_dir is not None else path.parent
    update: dict[str, Any] = {"name": spec.name or path.stem, "files": tuple(base / f for f in spec.files)}
    split_files: dict[str, tuple[Path, ...]] = {}
    if spec.splits is not None:
        split_files = {name: _glob(base, getattr(spec.splits, name), f"{path}: splits.{name}") for name in SPLITS}
        update["files"] = tuple(f for name in SPLITS for f in split_files[name])
    resolved = spec.model_copy(update=update)
    resolved._split_files = split_files
    return resolved


def _glob(base: Path, patterns: tuple[str, ...], where: str) -> tuple[Path, ...]:
    """The files the patterns name (sorted within a pattern); a pattern that matches nothing is an error."""
    out: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matched = sorted(p for p in base.glob(pattern) if p.is_file())
        else:
            matched = [base / pattern] if (base / pattern).is_file() else []
        if not matched:
            raise FileNotFoundError(f"{where}: {pattern!r} matches no file under {base} (set --data-dir?)")
        out.extend(matched)
    return tuple(out)


def split_rows(
    n: int, timestamped: bool, seed: int, latest_valid: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) row positions of an n-row table (rows in time order if `timestamped`).

    Test: the latest 20% (time order) or a random 20%; valid: a random 1/8 of the rest, or with
    `latest_valid` (time order only) the latest 1/8 of the rest, so that validation, like the
    test rows, comes after every training row.
    """
    n_test = round(n * TEST_FRACTION)
    rng = np.random.default_rng(seed)
    order = np.arange(n) if timestamped else rng.permutation(n)
    train_valid, test = order[: n - n_test], order[n - n_test :]
    n_valid = round(len(train_valid) * VALID_FRACTION)
    if latest_valid:
        if not timestamped:
            raise ValueError("the latest rows validate only in a time-ordered table")
        return train_valid[: len(train_valid) - n_valid], train_valid[len(train_valid) - n_valid :], test
    shuffled = rng.permutation(train_valid)
    return np.sort(shuffled[n_valid:]), np.sort(shuffled[:n_valid]), test


def _read(spec: TableSpec, files: tuple[Path, ...] | None = None) -> pd.DataFrame:
    files = spec.files if files is None else files
    frames = []
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"data file {f} not found (set --data-dir?)")
        if f.name.endswith((".parquet", ".pq")):
            frames.append(pd.read_parquet(f, columns=None))
        else:
            frames.append(pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""]))
    frame = pd.concat(frames, ignore_index=True)
    missing = sorted(spec.columns - set(frame.columns))
    if missing:
        raise ValueError(f"{spec.name}: columns {missing} not in {[f.name for f in files]}")
    return frame


def _in_time_order(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    if not spec.timestamp:
        return frame
    ts = pd.to_numeric(frame[spec.timestamp], errors="coerce")
    return frame.assign(_ts=ts.fillna(ts.min())).sort_values("_ts", kind="stable").reset_index(drop=True)


def _labels(frame: pd.DataFrame, spec: TableSpec) -> np.ndarray:
    column = spec.label.column
    values = pd.to_numeric(frame[column], errors="coerce")
    if values.isna().any():
        bad = frame.loc[values.isna(), column].iloc[0]
        raise ValueError(f"{spec.name}: label column {column!r} holds a non-number ({bad!r})")
    if spec.label.threshold is not None:
        return (values.to_numpy() >= spec.label.threshold).astype(np.float32)
    labels = values.to_numpy().astype(np.float32)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"{spec.name}: label {column!r} must be 0/1 (or give label.threshold)")
    return labels


def _tokens(values: pd.Series, separator: str) -> list[list[str]]:
    return [[] if not isinstance(v, str) or not v else v.split(separator) for v in values]


def _strings(values: pd.Series) -> pd.Series:
    """Raw values as the strings vocabularies hold (integral floats from Parquet as integers)."""
    if pd.api.types.is_float_dtype(values) and ((values.dropna() % 1) == 0).all():
        return values.astype("Int64").astype(str)
    return values.astype(str)


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64)


def _fit_vocabs(frame: pd.DataFrame, spec: TableSpec) -> dict[str, Vocabulary]:
    """One vocabulary per vocab name, over the training values of every field that shares it."""
    values: dict[str, list[np.ndarray]] = {}
    first: dict[str, ColumnSpec] = {}
    for c in spec.features:
        if c.kind is Kind.DENSE:
            continue
        first.setdefault(c.vocab, c)
        if c.kind is Kind.SPARSE:
            part = _strings(frame[c.column]).to_numpy()
        else:
            part = np.array([t for x in _tokens(frame[c.column], c.separator) for t in x], dtype=object)
        values.setdefault(c.vocab, []).append(part)
    vocabs: dict[str, Vocabulary] = {}
    for vocab, parts in values.items():
        c = first[vocab]
        if c.hash_buckets is not None:
            vocabs[vocab] = HashedVocabulary(c.hash_buckets, c.hash)
        else:
            joined = np.concatenate(parts) if parts else np.zeros(0, object)
            vocabs[vocab] = Vocabulary.fit(joined if len(joined) else np.array([""]), c.min_count)
    return vocabs


@dataclass(frozen=True)
class DenseStats:
    """What a dense column's spec is fitted from: moments of its values (missing as 0) and a
    sample of its present values (all of them in memory; a reservoir when streaming)."""

    mean: float
    std: float
    sample: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> DenseStats:
        filled = np.nan_to_num(values)
        return cls(
            float(filled.mean()) if len(filled) else 0.0,
            float(filled.std()) if len(filled) else 0.0,
            values[~np.isnan(values)],
        )


def _feature_specs(frame: pd.DataFrame, spec: TableSpec, vocabs: dict[str, Vocabulary]) -> dict[str, FeatureSpec]:
    """The model-side spec of each field; dense statistics are fitted on `frame` (the training rows)."""
    dense = {c.column: DenseStats.of(_numbers(frame[c.column])) for c in spec.features if c.kind is Kind.DENSE}
    return feature_specs(spec, vocabs, dense)


def feature_specs(
    spec: TableSpec, vocabs: dict[str, Vocabulary], dense: dict[str, DenseStats]
) -> dict[str, FeatureSpec]:
    """The model-side spec of each field; a bucketed dense field adds its bucket vocabulary to `vocabs`."""
    out = {}
    for c in spec.features:
        common: dict[str, Any] = {"static": c.static, "dim": c.dim}
        if c.kind is Kind.DENSE and c.buckets is not None:
            x = dense[c.column].sample
            qs = np.quantile(x, np.linspace(0, 1, c.buckets + 1)[1:-1]) if len(x) else np.zeros(0)
            boundaries = tuple(float(b) for b in np.unique(qs))
            vocabs[c.vocab] = Vocabulary([f"bucket{i}" for i in range(len(boundaries) + 1)])
            out[c.name] = FeatureSpec(c.name, c.side, Kind.SPARSE, c.vocab, boundaries=boundaries, **common)
        elif c.kind is Kind.DENSE:
            normalize = (dense[c.column].mean, dense[c.column].std or 1.0) if c.normalize else None
            out[c.name] = FeatureSpec(c.name, c.side, c.kind, None, static=c.static, normalize=normalize)
        elif c.kind is Kind.SEQUENCE:
            out[c.name] = FeatureSpec(
                c.name,
                c.side,
                c.kind,
                c.vocab,
                pooling=c.pooling,
                max_len=c.max_len,
                newest_first=c.newest_first,
                **common,
            )
        else:
            out[c.name] = FeatureSpec(c.name, c.side, c.kind, c.vocab, **common)
    return out


def _table(
    frame: pd.DataFrame,
    rows: np.ndarray,
    columns: list[ColumnSpec],
    specs: dict[str, FeatureSpec],
    vocabs: dict[str, Vocabulary],
) -> FeatureTable:
    """The named columns of `rows`, encoded."""
    part = frame.iloc[rows]
    table = FeatureTable(len(rows))
    for c in columns:
        f = specs[c.name]
        if f.boundaries is not None:
            table.sparse[c.name] = f.bucketize(_numbers(part[c.column]))
        elif c.kind is Kind.DENSE:
            table.dense[c.name] = np.nan_to_num(_numbers(part[c.column])).astype(np.float32)
        elif c.kind is Kind.SPARSE:
            table.sparse[c.name] = vocabs[c.vocab].encode(_strings(part[c.column]))
        else:  # unknown and rare tokens are dropped (as the server does), then the most recent kept
            vocab = vocabs[c.vocab]
            lists = [
                f.truncate(ids[ids > 0]) for ids in (vocab.encode(x) for x in _tokens(part[c.column], c.separator))
            ]
            offsets = np.zeros(len(lists) + 1, np.int64)
            np.cumsum([len(x) for x in lists], out=offsets[1:])
            values = np.concatenate(lists) if lists else np.zeros(0, np.int64)
            table.sequences[c.name] = (values.astype(np.int64), offsets)
    return table


def _representatives(keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Group id of every row and the last row of each group (rows are in time order if known)."""
    groups = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy()
    last = np.zeros(groups.max() + 1 if len(groups) else 0, np.int64)
    last[groups] = np.arange(len(groups))
    return groups.astype(np.int64), last


def load_tabular(schema_file: Path, data_dir: Path | None = None, seed: int = 1023) -> Dataset:
    """Reads a schema-described dataset into train / valid / test splits and a serving snapshot."""
    spec = read_table_spec(schema_file, data_dir)
    if spec.split_files:  # split already: each split's rows in time order, train then valid then test
        parts = [_in_time_order(_read(spec, spec.split_files[name]), spec) for name in SPLITS]
        frame = pd.concat(parts, ignore_index=True)
        ends = np.cumsum([len(part) for part in parts])
        train, valid, test = np.arange(ends[0]), np.arange(ends[0], ends[1]), np.arange(ends[1], ends[2])
        if min(len(train), len(valid), len(test)) == 0:
            raise ValueError(f"{spec.name}: every split needs rows, got {[len(p) for p in parts]}")
    else:
        frame = _in_time_order(_read(spec), spec)
        if len(frame) < 10:
            raise ValueError(f"{spec.name}: {len(frame)} rows is too few to split")
        train, valid, test = split_rows(len(frame), bool(spec.timestamp), seed, spec.valid == "latest")
    labels = _labels(frame, spec)

    fit = frame.iloc[train]
    vocabs = _fit_vocabs(fit, spec)
    specs = _feature_specs(fit, spec, vocabs)
    user_cols = [c for c in spec.features if c.side in (Side.USER, Side.CONTEXT)]
    ad_cols = [c for c in spec.features if c.side is Side.AD]
    context = [c.column for c in user_cols if c.side is Side.CONTEXT]
    row_user, user_rep = _representatives(frame[[spec.user_key, *context]].astype(str))
    row_key, serving_rep = _representatives(frame[[spec.user_key]].astype(str))  # users by key alone
    row_ad, ad_rep = _representatives(frame[[spec.ad_key]].astype(str))
    users = _table(frame, user_rep, user_cols, specs, vocabs)
    ads = _table(frame, ad_rep, ad_cols, specs, vocabs)

    def split(idx: np.ndarray) -> Split:
        return Split(row_user[idx], row_ad[idx], labels[idx], users, ads, row_key[idx] if context else None)

    # Serving snapshot: each user's latest row (its latest context), each ad's latest row.
    raw_ad_keys = frame[spec.ad_key].iloc[ad_rep]
    numeric = pd.to_numeric(raw_ad_keys, errors="coerce")
    if numeric.notna().all() and (numeric % 1 == 0).all() and numeric.min() >= 0:
        ad_ids = numeric.to_numpy(np.int64).copy()
        ad_id_source = "column"
    else:  # string keys (e.g. ASINs) are served by their position in the ad table, 1..N
        ad_ids = np.arange(1, len(ad_rep) + 1, dtype=np.int64)
        ad_id_source = "row number"
    bids = np.ones(len(ad_rep), np.float32)
    if spec.bid:
        per_ad = pd.to_numeric(frame[spec.bid], errors="coerce").groupby(row_ad).mean()
        bids = per_ad.reindex(range(len(ad_rep))).fillna(1.0).to_numpy(np.float32)
    used = {f.vocab for f in specs.values() if f.vocab}
    schema = FeatureSchema(
        tuple(specs[c.name] for c in spec.features), {k: len(v) for k, v in vocabs.items() if k in used}
    )
    spec_digest = hashlib.sha256(Path(schema_file).read_bytes()).hexdigest()
    return Dataset(
        name=spec.name,
        protocol="time" if spec.timestamp else "random",
        schema=schema,
        vocabs=vocabs,
        train=split(train),
        valid=split(valid),
        test=split(test),
        user_keys=frame[spec.user_key].iloc[serving_rep].astype(str).tolist(),
        users=_table(frame, serving_rep, user_cols, specs, vocabs),
        ad_ids=ad_ids,
        ads=ads,
        ad_bids=bids,
        checksum=files_sha256(spec.files),
        user_source_rows=user_rep,
        ad_source_rows=ad_rep,
        info={
            "schema_file": Path(schema_file).name,
            "schema_sha256": spec_digest,
            "split_seed": seed if not spec.split_files else None,
            "split": "files" if spec.split_files else ("time" if spec.timestamp else "random"),
            "valid": "files" if spec.split_files else spec.valid,
            "ad_ids_from": ad_id_source,
        },
    )
