"""MovieLens-1M: loading (official GroupLens layout or the merged CSV) and the two protocols.

`paper` reproduces the IntTower/HIT reference preprocessing (MODELS.md §11.1): ratings of 3
dropped, label = rating >= 4, random 80/20 split, and per-split aggregates and positive history
that include each row's own label. `paper-neutral` is `paper` with the ratings of 3 kept as
negatives (a reading of other pipelines' numbers, used by results/zoo). `clean` keeps the label
rule and the split but computes every aggregate and history from training rows only,
out-of-fold for the training rows themselves, with encoders fitted on training rows and an
out-of-vocabulary id for the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from models.features import FeatureSchema, FeatureSpec, Kind, Side, Vocabulary
from models.tables import FeatureTable
from offline.data.dataset import Dataset, Split, concat_tables, csr_from_lists, files_sha256

__all__ = ["OFFICIAL_URL", "PROTOCOLS", "build_movielens", "has_movielens", "load_movielens", "read_movielens"]

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
PROTOCOLS = ("paper", "clean", "paper-neutral")
CLEAN_FOLDS = 5

SCHEMA_FIELDS = (
    FeatureSpec("user_id", Side.USER, Kind.SPARSE, "user_id"),
    FeatureSpec("gender", Side.USER, Kind.SPARSE, "gender", static=True),
    FeatureSpec("age", Side.USER, Kind.SPARSE, "age", static=True),
    FeatureSpec("occupation", Side.USER, Kind.SPARSE, "occupation"),
    FeatureSpec("user_mean_rating", Side.USER, Kind.DENSE),
    FeatureSpec("user_hist", Side.USER, Kind.SEQUENCE, "user_hist"),
    FeatureSpec("movie_id", Side.AD, Kind.SPARSE, "movie_id", static=True),
    FeatureSpec("item_mean_rating", Side.AD, Kind.DENSE),
    FeatureSpec("genres", Side.AD, Kind.SEQUENCE, "genres"),
)


def has_movielens(data_dir: Path) -> bool:
    """True when `data_dir` holds MovieLens-1M in a layout `read_movielens` accepts."""
    ratings = (data_dir / "ratings.dat").exists() or (data_dir / "ratings_merged.csv.gz").exists()
    return ratings and (data_dir / "users.dat").exists() and (data_dir / "movies.dat").exists()


def read_movielens(data_dir: Path) -> tuple[pd.DataFrame, str]:
    """Reads ratings joined with users and movies; returns the frame and a data checksum.

    Accepts the official layout (`ratings.dat`) or the merged `ratings_merged.csv.gz`; rows with
    an unknown rating are dropped. Timestamps are never used.
    """
    data_dir = Path(data_dir)
    users_path, movies_path = data_dir / "users.dat", data_dir / "movies.dat"
    for path in (users_path, movies_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; MovieLens-1M needs users.dat, movies.dat and ratings "
                f"(download: prerank download-movielens --data-dir DIR)"
            )
    if (data_dir / "ratings.dat").exists():
        ratings_path = data_dir / "ratings.dat"
        ratings = pd.read_csv(
            ratings_path, sep="::", engine="python", names=["user_id", "movie_id", "rating", "timestamp"]
        )
    elif (data_dir / "ratings_merged.csv.gz").exists():
        ratings_path = data_dir / "ratings_merged.csv.gz"
        ratings = pd.read_csv(ratings_path, usecols=["user_id", "movie_id", "rating"])
    else:
        raise FileNotFoundError(f"no ratings.dat or ratings_merged.csv.gz in {data_dir}")
    ratings = ratings.dropna(subset=["rating"])
    users = pd.read_csv(users_path, sep="::", engine="python", names=["user_id", "gender", "age", "occupation", "zip"])
    movies = pd.read_csv(
        movies_path, sep="::", engine="python", names=["movie_id", "title", "genres"], encoding="latin-1"
    )
    frame = ratings.merge(users, on="user_id").merge(movies, on="movie_id")
    frame["rating"] = frame["rating"].astype(np.int64)
    checksum = files_sha256([ratings_path, users_path, movies_path])
    return frame[["user_id", "movie_id", "rating", "gender", "age", "occupation", "genres"]], checksum


def _positive_lists(rows: pd.DataFrame, movie_vocab: Vocabulary) -> pd.Series:
    pos = rows.loc[rows["label"] == 1, ["user_id", "movie_id"]]
    encoded = pos.assign(token=movie_vocab.encode(pos["movie_id"]))
    return encoded.groupby("user_id")["token"].agg(lambda s: s.to_numpy())


class _Encoder:
    """Builds user and ad feature tables from 'stats rows' (the rows aggregates may read)."""

    def __init__(self, profiles: pd.DataFrame, movies: pd.DataFrame, vocabs: dict[str, Vocabulary]) -> None:
        self.profiles = profiles.set_index("user_id")
        self.movies = movies.set_index("movie_id")
        self.vocabs = vocabs
        genre_lists = self.movies["genres"].str.split("|")
        self.genre_tokens = genre_lists.map(lambda g: vocabs["genres"].encode(g))

    def users(self, keys: pd.Index, stats: pd.DataFrame, default_mean: float) -> FeatureTable:
        prof = self.profiles.reindex(keys)
        mean = stats.groupby("user_id")["label"].mean().reindex(keys).fillna(default_mean)
        return FeatureTable(
            len(keys),
            sparse={
                "user_id": self.vocabs["user_id"].encode(keys),
                "gender": self.vocabs["gender"].encode(prof["gender"]),
                "age": self.vocabs["age"].encode(prof["age"]),
                "occupation": self.vocabs["occupation"].encode(prof["occupation"]),
            },
            dense={"user_mean_rating": mean.to_numpy(np.float32)},
            sequences={"user_hist": csr_from_lists(keys, _positive_lists(stats, self.vocabs["user_hist"]))},
        )

    def ads(self, keys: pd.Index, stats: pd.DataFrame, default_mean: float) -> FeatureTable:
        mean = stats.groupby("movie_id")["label"].mean().reindex(keys).fillna(default_mean)
        return FeatureTable(
            len(keys),
            sparse={"movie_id": self.vocabs["movie_id"].encode(keys)},
            dense={"item_mean_rating": mean.to_numpy(np.float32)},
            sequences={"genres": csr_from_lists(keys, self.genre_tokens)},
        )


def _fit_vocabs(rows: pd.DataFrame, movies: pd.DataFrame) -> dict[str, Vocabulary]:
    movie_vocab = Vocabulary.fit(rows["movie_id"])
    genres = sorted({g for gs in movies["genres"] for g in gs.split("|")})
    return {
        "user_id": Vocabulary.fit(rows["user_id"]),
        "gender": Vocabulary.fit(rows["gender"]),
        "age": Vocabulary.fit(rows["age"]),
        "occupation": Vocabulary.fit(rows["occupation"]),
        "movie_id": movie_vocab,
        "user_hist": movie_vocab,
        "genres": Vocabulary(genres),
    }


def _paper_split(rows: pd.DataFrame, enc: _Encoder) -> tuple[Split, pd.Index, pd.Index]:
    """Aggregates over the split's own rows (own label included); users without a positive dropped.

    Returns the split and the raw user and movie keys of its tables' rows.
    """
    has_pos = rows.groupby("user_id")["label"].transform("max") == 1
    rows = rows[has_pos]
    user_keys = pd.Index(rows["user_id"].unique())
    ad_keys = pd.Index(rows["movie_id"].unique())
    split = Split(
        user_keys.get_indexer(rows["user_id"]).astype(np.int64),
        ad_keys.get_indexer(rows["movie_id"]).astype(np.int64),
        rows["label"].to_numpy(np.float32),
        enc.users(user_keys, rows, 0.0),
        enc.ads(ad_keys, rows, 0.0),
    )
    return split, user_keys, ad_keys


def _minmax(splits: list[Split], fit: Split) -> None:
    """Min-max scales dense fields in place with bounds fitted on `fit`."""
    for table_name in ("users", "ads"):
        fit_table = getattr(fit, table_name)
        for name, col in fit_table.dense.items():
            lo, hi = float(col.min()), float(col.max())
            scale = hi - lo if hi > lo else 1.0
            done: set[int] = set()
            for split in splits:
                table = getattr(split, table_name)
                if id(table) not in done:
                    table.dense[name] = ((table.dense[name] - lo) / scale).astype(np.float32)
                    done.add(id(table))


def load_movielens(data_dir: Path, protocol: str = "paper", seed: int = 1023) -> Dataset:
    """Loads MovieLens-1M under a protocol ("paper" or "clean"); see the module docstring."""
    frame, checksum = read_movielens(data_dir)
    return build_movielens(frame, checksum, protocol, seed)


def build_movielens(frame: pd.DataFrame, checksum: str, protocol: str = "paper", seed: int = 1023) -> Dataset:
    """Applies a protocol to a joined ratings frame (see `read_movielens`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol != "paper-neutral":
        frame = frame[frame["rating"] != 3].reset_index(drop=True)
    frame["label"] = (frame["rating"] >= 4).astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test = round(0.2 * len(frame))
    train_rows = frame.iloc[order[n_test:]].reset_index(drop=True)
    test_rows = frame.iloc[order[:n_test]].reset_index(drop=True)
    movies = frame.drop_duplicates("movie_id")[["movie_id", "genres"]]
    profiles = frame.drop_duplicates("user_id")[["user_id", "gender", "age", "occupation"]]
    n_fit = round(0.8 * len(train_rows))

    if protocol in ("paper", "paper-neutral"):
        vocabs = _fit_vocabs(frame, movies)
        enc = _Encoder(profiles, movies, vocabs)
        train_all, train_users, train_ads = _paper_split(train_rows, enc)
        test, test_users, test_ads = _paper_split(test_rows, enc)
        n_fit = round(0.8 * len(train_all))
        train = train_all.subset(np.arange(n_fit))
        valid = train_all.subset(np.arange(n_fit, len(train_all)))
        _minmax([train, valid, test], train)
        # Serving snapshot: test-split features where the entity appears in test, else train's.
        user_keys, users = _merge_snapshot(test.users, test_users, train_all.users, train_users)
        ad_ids, ads = _merge_snapshot(test.ads, test_ads, train_all.ads, train_ads)
    else:
        fit_rows = train_rows.iloc[:n_fit].reset_index(drop=True)
        vocabs = _fit_vocabs(fit_rows, movies)
        enc = _Encoder(profiles, movies, vocabs)
        train, valid, test, (user_keys, users, ad_ids, ads) = _clean_splits(
            fit_rows, train_rows.iloc[n_fit:], test_rows, enc, rng
        )
    schema = FeatureSchema(SCHEMA_FIELDS, {k: len(v) for k, v in vocabs.items()})
    return Dataset(
        name="movielens-1m",
        protocol=protocol,
        schema=schema,
        vocabs=vocabs,
        train=train,
        valid=valid,
        test=test,
        user_keys=[str(k) for k in user_keys],
        users=users,
        ad_ids=np.asarray(ad_ids, dtype=np.int64),
        ads=ads,
        ad_bids=np.ones(len(ad_ids), dtype=np.float32),
        checksum=checksum,
        info={"split_seed": seed, "rows_after_drop": len(frame)},
    )


def _merge_snapshot(
    primary: FeatureTable, p_keys: pd.Index, fallback: FeatureTable, f_keys: pd.Index
) -> tuple[list[object], FeatureTable]:
    """Rows of `primary`, then the rows of `fallback` whose keys `primary` lacks."""
    extra = f_keys.difference(p_keys)
    return [*p_keys, *extra], concat_tables([primary, fallback.take_rows(f_keys.get_indexer(extra))])


def _clean_splits(
    fit_rows: pd.DataFrame, valid_rows: pd.DataFrame, test_rows: pd.DataFrame, enc: _Encoder, rng: np.random.Generator
) -> tuple[Split, Split, Split, tuple[list[object], FeatureTable, list[object], FeatureTable]]:
    """Out-of-fold features for fit rows; features from all fit rows for validation, test and serving."""
    default = float(fit_rows["label"].mean())
    all_users = pd.Index(sorted(set(fit_rows["user_id"]) | set(valid_rows["user_id"]) | set(test_rows["user_id"])))
    all_ads = pd.Index(sorted(set(fit_rows["movie_id"]) | set(valid_rows["movie_id"]) | set(test_rows["movie_id"])))
    folds = rng.integers(0, CLEAN_FOLDS, len(fit_rows))
    user_tables, ad_tables = [], []
    user_rows = np.empty(len(fit_rows), np.int64)
    ad_rows = np.empty(len(fit_rows), np.int64)
    u_base = a_base = 0
    for k in range(CLEAN_FOLDS):
        in_fold = folds == k
        stats = fit_rows[~in_fold]
        rows = fit_rows[in_fold]
        u_keys, a_keys = pd.Index(rows["user_id"].unique()), pd.Index(rows["movie_id"].unique())
        user_tables.append(enc.users(u_keys, stats, default))
        ad_tables.append(enc.ads(a_keys, stats, default))
        user_rows[in_fold] = u_base + u_keys.get_indexer(rows["user_id"])
        ad_rows[in_fold] = a_base + a_keys.get_indexer(rows["movie_id"])
        u_base += len(u_keys)
        a_base += len(a_keys)
    serving_users = enc.users(all_users, fit_rows, default)
    serving_ads = enc.ads(all_ads, fit_rows, default)
    users = concat_tables([*user_tables, serving_users])
    ads = concat_tables([*ad_tables, serving_ads])

    def held_out(rows: pd.DataFrame) -> Split:
        return Split(
            u_base + all_users.get_indexer(rows["user_id"]).astype(np.int64),
            a_base + all_ads.get_indexer(rows["movie_id"]).astype(np.int64),
            rows["label"].to_numpy(np.float32),
            users,
            ads,
        )

    train = Split(user_rows, ad_rows, fit_rows["label"].to_numpy(np.float32), users, ads)
    return (
        train,
        held_out(valid_rows),
        held_out(test_rows),
        (list(all_users), serving_users, list(all_ads), serving_ads),
    )
