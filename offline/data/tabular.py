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

Rows are split 80/20 into train+valid and test (randomly with `split_seed`, or by time when
`timestamp` is given: the latest 20% are the test rows), and 1/8 of train+valid is the
validation set. The user side of a row is its user's fields plus the row's context fields; the
published user store keeps each user's latest row.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.features import FeatureSchema, FeatureSpec, Kind, Side, Vocabulary
from models.tables import FeatureTable
from offline.data.dataset import Dataset, Split, files_sha256

__all__ = ["SCHEMA_SUFFIXES", "TableSpec", "load_tabular", "read_table_spec"]

SCHEMA_SUFFIXES = (".toml", ".json")
TEST_FRACTION = 0.2
VALID_FRACTION = 0.125  # of the train+valid rows, i.e. 10% of all rows


@dataclass(frozen=True)
class ColumnSpec:
    column: str
    name: str
    side: Side
    kind: Kind
    static: bool = False
    separator: str = "|"


@dataclass(frozen=True)
class TableSpec:
    """A parsed schema file."""

    name: str
    files: tuple[Path, ...]
    user_key: str
    ad_key: str
    label: str
    label_threshold: float | None
    features: tuple[ColumnSpec, ...]
    timestamp: str | None = None
    bid: str | None = None


def _require(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise ValueError(f"{where}: missing required key: {key}")
    return raw[key]


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
    where = str(path)
    base = Path(data_dir) if data_dir is not None else path.parent
    files = tuple(base / f for f in _require(raw, "files", where))
    label = _require(raw, "label", where)
    label = label if isinstance(label, dict) else {"column": label}
    features = []
    for i, f in enumerate(_require(raw, "features", where)):
        at = f"{where}: features[{i}]"
        column = _require(f, "column", at)
        try:
            side, kind = Side(_require(f, "side", at)), Kind(_require(f, "kind", at))
        except ValueError as exc:
            raise ValueError(f"{at} ({column}): {exc}") from None
        unknown = set(f) - {"column", "name", "side", "kind", "static", "separator"}
        if unknown:
            raise ValueError(f"{at} ({column}): unknown keys {sorted(unknown)}")
        features.append(
            ColumnSpec(column, f.get("name", column), side, kind, bool(f.get("static", False)), f.get("separator", "|"))
        )
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: feature names must be unique")
    spec = TableSpec(
        name=raw.get("name", path.stem),
        files=files,
        user_key=_require(raw, "user_key", where),
        ad_key=_require(raw, "ad_key", where),
        label=_require(label, "column", f"{where}: label"),
        label_threshold=label.get("threshold"),
        features=tuple(features),
        timestamp=raw.get("timestamp"),
        bid=raw.get("bid"),
    )
    for side in (Side.USER, Side.AD):
        if not any(f.side is side for f in spec.features):
            raise ValueError(f"{where}: needs at least one {side.value} feature")
    return spec


def _read(spec: TableSpec) -> pd.DataFrame:
    frames = []
    for f in spec.files:
        if not f.exists():
            raise FileNotFoundError(f"data file {f} not found (set --data-dir?)")
        if f.name.endswith((".parquet", ".pq")):
            frames.append(pd.read_parquet(f))
        else:
            frames.append(pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""]))
    frame = pd.concat(frames, ignore_index=True)
    needed = {spec.user_key, spec.ad_key, spec.label, *(f.column for f in spec.features)}
    needed |= {c for c in (spec.timestamp, spec.bid) if c}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ValueError(f"{spec.name}: columns {missing} not in {[f.name for f in spec.files]}")
    return frame


def _labels(frame: pd.DataFrame, spec: TableSpec) -> np.ndarray:
    values = pd.to_numeric(frame[spec.label], errors="coerce")
    if values.isna().any():
        bad = frame.loc[values.isna(), spec.label].iloc[0]
        raise ValueError(f"{spec.name}: label column {spec.label!r} holds a non-number ({bad!r})")
    if spec.label_threshold is not None:
        return (values.to_numpy() >= spec.label_threshold).astype(np.float32)
    labels = values.to_numpy().astype(np.float32)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"{spec.name}: label {spec.label!r} must be 0/1 (or give label.threshold)")
    return labels


def _tokens(values: pd.Series, separator: str) -> list[list[str]]:
    return [[] if not isinstance(v, str) or not v else v.split(separator) for v in values]


def _table(
    frame: pd.DataFrame, rows: np.ndarray, columns: list[ColumnSpec], vocabs: dict[str, Vocabulary]
) -> FeatureTable:
    """The named columns of `rows`, encoded."""
    part = frame.iloc[rows]
    table = FeatureTable(len(rows))
    for c in columns:
        if c.kind is Kind.DENSE:
            table.dense[c.name] = pd.to_numeric(part[c.column], errors="coerce").fillna(0.0).to_numpy(np.float32)
        elif c.kind is Kind.SPARSE:
            table.sparse[c.name] = vocabs[c.name].encode(part[c.column].astype(str))
        else:
            lists = _tokens(part[c.column], c.separator)
            offsets = np.zeros(len(lists) + 1, np.int64)
            np.cumsum([len(x) for x in lists], out=offsets[1:])
            flat = [t for x in lists for t in x]
            table.sequences[c.name] = (vocabs[c.name].encode(flat), offsets)
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
    frame = _read(spec)
    if spec.timestamp:
        ts = pd.to_numeric(frame[spec.timestamp], errors="coerce")
        frame = frame.assign(_ts=ts.fillna(ts.min())).sort_values("_ts", kind="stable").reset_index(drop=True)
    labels = _labels(frame, spec)
    n = len(frame)
    if n < 10:
        raise ValueError(f"{spec.name}: {n} rows is too few to split")
    n_test = round(n * TEST_FRACTION)
    rng = np.random.default_rng(seed)
    order = np.arange(n) if spec.timestamp else rng.permutation(n)
    train_valid, test = order[: n - n_test], order[n - n_test :]
    shuffled = rng.permutation(train_valid)
    n_valid = round(len(train_valid) * VALID_FRACTION)
    valid, train = np.sort(shuffled[:n_valid]), np.sort(shuffled[n_valid:])

    vocabs: dict[str, Vocabulary] = {}
    fit = frame.iloc[train]
    for c in spec.features:
        if c.kind is Kind.SPARSE:
            vocabs[c.name] = Vocabulary.fit(fit[c.column].astype(str))
        elif c.kind is Kind.SEQUENCE:
            vocabs[c.name] = Vocabulary.fit(
                np.array([t for x in _tokens(fit[c.column], c.separator) for t in x] or [""])
            )

    user_cols = [c for c in spec.features if c.side in (Side.USER, Side.CONTEXT)]
    ad_cols = [c for c in spec.features if c.side is Side.AD]
    context = [c.column for c in user_cols if c.side is Side.CONTEXT]
    row_user, user_rep = _representatives(frame[[spec.user_key, *context]].astype(str))
    row_ad, ad_rep = _representatives(frame[[spec.ad_key]].astype(str))
    users = _table(frame, user_rep, user_cols, vocabs)
    ads = _table(frame, ad_rep, ad_cols, vocabs)

    def split(idx: np.ndarray) -> Split:
        return Split(row_user[idx], row_ad[idx], labels[idx], users, ads)

    # Serving snapshot: each user's latest row (its latest context), each ad's latest row.
    _, serving_rep = _representatives(frame[[spec.user_key]].astype(str))
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
    schema = FeatureSchema(
        tuple(
            FeatureSpec(c.name, c.side, c.kind, c.name if c.kind is not Kind.DENSE else None, c.static)
            for c in spec.features
        ),
        {k: len(v) for k, v in vocabs.items()},
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
        users=_table(frame, serving_rep, user_cols, vocabs),
        ad_ids=ad_ids,
        ads=ads,
        ad_bids=bids,
        checksum=files_sha256(spec.files),
        info={
            "schema_file": Path(schema_file).name,
            "schema_sha256": spec_digest,
            "split_seed": seed,
            "ad_ids_from": ad_id_source,
        },
    )
