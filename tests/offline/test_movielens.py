"""Both MovieLens protocols on the real data (a user subset keeps these fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.data.movielens import PROTOCOLS, build_movielens, read_movielens
from prerank import job as cli


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, str]:
    from tests.conftest import MOVIELENS

    if not (MOVIELENS / "users.dat").exists():
        pytest.skip("MovieLens-1M not found")
    full, checksum = read_movielens(MOVIELENS)
    return full, checksum


@pytest.fixture(scope="module")
def small(frame: tuple[pd.DataFrame, str]) -> pd.DataFrame:
    full, _ = frame
    return full[full["user_id"] <= 300].reset_index(drop=True)


def test_reader_drops_unknown_ratings_and_joins(frame: tuple[pd.DataFrame, str]) -> None:
    full, checksum = frame
    assert len(full) == 1_000_209 - 131  # 131 ratings unknown in the merged file
    assert full["rating"].between(1, 5).all()
    assert set(full.columns) >= {"user_id", "movie_id", "gender", "age", "occupation", "genres"}
    assert "timestamp" not in full.columns
    assert len(checksum) == 64


def test_paper_protocol_sizes_and_labels(frame: tuple[pd.DataFrame, str]) -> None:
    full, checksum = frame
    data = build_movielens(full, checksum, "paper")
    n_threes = int((full["rating"] == 3).sum())
    total = len(data.train) + len(data.valid) + len(data.test)
    # rows of users without a positive in a split are dropped (reference inner join): a handful
    assert len(full) - n_threes - 200 < total <= len(full) - n_threes
    assert len(data.test) / total == pytest.approx(0.2, abs=0.005)
    assert data.train.labels.mean() == pytest.approx(0.778, abs=0.01)
    assert data.describe()["protocol"] == "paper" and data.describe()["data_sha256"] == checksum


def test_paper_neutral_keeps_threes_as_negatives(small: pd.DataFrame) -> None:
    paper, neutral = build_movielens(small, "x", "paper"), build_movielens(small, "x", "paper-neutral")
    n_threes = int((small["rating"] == 3).sum())
    rows = {name: len(d.train) + len(d.valid) + len(d.test) for name, d in (("paper", paper), ("neutral", neutral))}
    assert rows["neutral"] - rows["paper"] == pytest.approx(n_threes, abs=20)  # users without a positive drop out
    positives = {
        name: sum(float(s.labels.sum()) for s in (d.train, d.valid, d.test))
        for name, d in (("paper", paper), ("neutral", neutral))
    }
    assert positives["neutral"] == positives["paper"]  # a 3 is never a positive
    assert cli.PROTOCOLS == PROTOCOLS


def _row_features(data, split_name: str, i: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    split = getattr(data, split_name)
    feats, _ = split.batch(np.array([i]))
    return {
        k: (v.values.tolist() if hasattr(v, "values") and not hasattr(v, "tolist") else v.tolist())
        for k, v in feats.items()
    }


def _flip(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    out = frame.copy()
    out.loc[row, "rating"] = 1 if out.loc[row, "rating"] >= 4 else 5
    return out


def _locate(data, split_name: str, user: int, movie: int) -> int:  # type: ignore[no-untyped-def]
    split = getattr(data, split_name)
    uid = data.vocabs["user_id"].encode_one(user)
    mid = data.vocabs["movie_id"].encode_one(movie)
    hits = np.flatnonzero(
        (split.users.sparse["user_id"][split.user_rows] == uid) & (split.ads.sparse["movie_id"][split.ad_rows] == mid)
    )
    assert len(hits) == 1
    return int(hits[0])


def _first_row_of(data, small: pd.DataFrame, split_name: str) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    split = getattr(data, split_name)
    kept = small[small["rating"] != 3].reset_index()
    uid = split.users.sparse["user_id"][split.user_rows[0]]
    mid = split.ads.sparse["movie_id"][split.ad_rows[0]]
    user = int(data.vocabs["user_id"].tokens[uid - 1])
    movie = int(data.vocabs["movie_id"].tokens[mid - 1])
    row = kept[(kept["user_id"] == user) & (kept["movie_id"] == movie)]["index"].iloc[0]
    return int(row), user, movie


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_clean_protocol_cannot_see_a_rows_own_label(small: pd.DataFrame, split_name: str) -> None:
    base = build_movielens(small, "x", "clean")
    row, user, movie = _first_row_of(base, small, split_name)
    flipped = build_movielens(_flip(small, row), "x", "clean")
    i = _locate(base, split_name, user, movie)
    j = _locate(flipped, split_name, user, movie)
    assert getattr(base, split_name).labels[i] != getattr(flipped, split_name).labels[j]
    assert _row_features(base, split_name, i) == _row_features(flipped, split_name, j)


def test_paper_protocol_leaks_the_own_label_as_the_reference_does(small: pd.DataFrame) -> None:
    base = build_movielens(small, "x", "paper")
    row, user, movie = _first_row_of(base, small, "test")
    flipped = build_movielens(_flip(small, row), "x", "paper")
    a = _row_features(base, "test", _locate(base, "test", user, movie))
    b = _row_features(flipped, "test", _locate(flipped, "test", user, movie))
    assert a["item_mean_rating"] != b["item_mean_rating"] or a["user_mean_rating"] != b["user_mean_rating"]


def test_clean_protocol_uses_oov_for_ids_unseen_in_training(small: pd.DataFrame) -> None:
    data = build_movielens(small, "x", "clean")
    fit_movies = set(data.vocabs["movie_id"].tokens)
    test_ids = data.test.ads.sparse["movie_id"][data.test.ad_rows]
    # no escape clause: the 300-user sample has movies rated only in test rows, so the vocabulary
    # (fitted on training rows) is smaller than the sample's movies and some test rows are OOV
    assert len(fit_movies) < small["movie_id"].nunique()
    assert (test_ids == 0).any() and (test_ids == 0).mean() < 0.05
    assert (data.train.ads.sparse["movie_id"][data.train.ad_rows] > 0).all()


def test_missing_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"users\.dat"):
        read_movielens(tmp_path)
