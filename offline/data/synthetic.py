"""A deterministic synthetic display-ad dataset whose clicks come from a known function.

Users have a segment and an age bucket (static) and a short list of preferred categories
(behaviour); ads have a category and an advertiser (static), a quality and a bid. The click
probability is sigmoid(affinity(segment, category) + 0.5 * [category in preferences] + quality - 1.5),
so a model that learns the interaction beats one that only learns per-id popularity.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from models.features import FeatureSchema, FeatureSpec, Kind, Side, Vocabulary
from models.tables import FeatureTable
from offline.data.dataset import Dataset, Split

__all__ = ["make_synthetic"]

SCHEMA_FIELDS = (
    FeatureSpec("user_id", Side.USER, Kind.SPARSE, "user_id"),
    FeatureSpec("segment", Side.USER, Kind.SPARSE, "segment", static=True),
    FeatureSpec("age_bucket", Side.USER, Kind.SPARSE, "age_bucket", static=True),
    FeatureSpec("preferred_categories", Side.USER, Kind.SEQUENCE, "category"),
    FeatureSpec("ad_id", Side.AD, Kind.SPARSE, "ad_id"),
    FeatureSpec("category", Side.AD, Kind.SPARSE, "category", static=True),
    FeatureSpec("advertiser", Side.AD, Kind.SPARSE, "advertiser", static=True),
)


def make_synthetic(
    n_users: int = 2000, n_ads: int = 500, n_rows: int = 100_000, seed: int = 7, sparse_ids: bool = False
) -> Dataset:
    """Builds the dataset; the same arguments always give the same bytes.

    `sparse_ids`: the ads' external ids are distinct random 64-bit values (as hashed or
    snowflake ids are) instead of 0..N-1; features, rows and labels are unchanged.
    """
    rng = np.random.default_rng(seed)
    n_segments, n_ages, n_categories, n_advertisers = 12, 6, 20, 60
    affinity = rng.normal(0, 1.2, (n_segments, n_categories))
    segment = rng.integers(0, n_segments, n_users)
    age = rng.integers(0, n_ages, n_users)
    prefs = [rng.choice(n_categories, size=rng.integers(1, 5), replace=False) for _ in range(n_users)]
    category = rng.integers(0, n_categories, n_ads)
    advertiser = rng.integers(0, n_advertisers, n_ads)
    quality = rng.normal(0, 0.5, n_ads)
    bids = np.round(rng.lognormal(0.0, 0.6, n_ads), 4).astype(np.float32)

    row_user = rng.integers(0, n_users, n_rows)
    row_ad = rng.integers(0, n_ads, n_rows)
    pref_sets = [frozenset(int(c) for c in p) for p in prefs]

    def oracle(user_rows: np.ndarray, ad_rows: np.ndarray) -> np.ndarray:
        """The true click probability of each (user row, ad row) pair."""
        in_pref = np.fromiter(
            (int(category[a]) in pref_sets[u] for u, a in zip(user_rows, ad_rows, strict=True)), bool, len(user_rows)
        )
        logit = affinity[segment[user_rows], category[ad_rows]] + 0.5 * in_pref + quality[ad_rows] - 1.5
        return np.asarray(1 / (1 + np.exp(-logit)), dtype=np.float64)

    labels = (rng.random(n_rows) < oracle(row_user, row_ad)).astype(np.float32)

    vocabs = {
        "user_id": Vocabulary([str(i) for i in range(n_users)]),
        "segment": Vocabulary([str(i) for i in range(n_segments)]),
        "age_bucket": Vocabulary([str(i) for i in range(n_ages)]),
        "category": Vocabulary([str(i) for i in range(n_categories)]),
        "ad_id": Vocabulary([str(i) for i in range(n_ads)]),
        "advertiser": Vocabulary([str(i) for i in range(n_advertisers)]),
    }
    pref_offsets = np.zeros(n_users + 1, np.int64)
    np.cumsum([len(p) for p in prefs], out=pref_offsets[1:])
    users = FeatureTable(
        n_users,
        sparse={"user_id": np.arange(n_users) + 1, "segment": segment + 1, "age_bucket": age + 1},
        sequences={"preferred_categories": (np.concatenate(prefs).astype(np.int64) + 1, pref_offsets)},
    )
    ads = FeatureTable(
        n_ads,
        sparse={"ad_id": np.arange(n_ads) + 1, "category": category + 1, "advertiser": advertiser + 1},
    )
    order = rng.permutation(n_rows)
    n_test = n_rows // 5
    n_valid = (n_rows - n_test) // 5
    parts = np.split(order, [n_rows - n_test - n_valid, n_rows - n_test])

    def split(idx: np.ndarray) -> Split:
        return Split(row_user[idx].astype(np.int64), row_ad[idx].astype(np.int64), labels[idx], users, ads)

    args: dict[str, object] = {"n_users": n_users, "n_ads": n_ads, "n_rows": n_rows, "seed": seed}
    ad_ids = np.arange(n_ads, dtype=np.int64)
    if sparse_ids:
        args["sparse_ids"] = True
        ad_ids = _sparse_ids(n_ads, seed)
    checksum = hashlib.sha256(
        labels.tobytes() + row_user.tobytes() + row_ad.tobytes() + json.dumps(args).encode()
    ).hexdigest()
    return Dataset(
        name="synthetic",
        protocol="synthetic",
        schema=FeatureSchema(SCHEMA_FIELDS, {k: len(v) for k, v in vocabs.items()}),
        vocabs=vocabs,
        train=split(parts[0]),
        valid=split(parts[1]),
        test=split(parts[2]),
        user_keys=[str(i) for i in range(n_users)],
        users=users,
        ad_ids=ad_ids,
        ads=ads,
        ad_bids=bids,
        oracle=oracle,
        checksum=checksum,
        info={"generator": args},
    )


def _sparse_ids(n: int, seed: int) -> np.ndarray:
    """n distinct int64 ids drawn uniformly from [2**40, 2**63), in random order (their own stream)."""
    rng = np.random.default_rng([seed, 64])
    ids = np.zeros(0, np.int64)
    while len(ids) < n:
        ids = np.unique(np.concatenate([ids, rng.integers(2**40, 2**63 - 1, n - len(ids) + 16, dtype=np.int64)]))
    return rng.permutation(ids[:n])
