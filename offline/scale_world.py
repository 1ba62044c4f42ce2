"""A known-answer impression log at production size, written shard by shard in bounded memory.

`generate_scale_world(ScaleWorldConfig(ads=10_000_000, users=50_000_000, rows=100_000_000), out)`
writes Parquet shards under `out/train`, `out/valid` and `out/test` (time-ordered: the last
`test_fraction` of the rows are the test rows, the `valid_fraction` before them the validation
rows), a schema file (`schema.toml`, with `[splits]`, read by `prerank train --stream` and, at
small sizes, by the in-memory loader), and `reference.json` with the test rows' Bayes AUC and
LogLoss (the true click probabilities as the prediction).

No table of 50M users is ever built: an entity's fields and its own effect are functions of its id
(splitmix64 of the id with a per-field key), so any chunk of rows is generated on its own. The
click model, with s(u) the user's segment, g(u) its region, c(a) the ad's category, v(a) its
advertiser and p the slot::

    logit = b0 + max_k <I[s(u), k], C[c(a)]>      multi-interest MaxSim (HIT's assumption)
               + R[g(u), c(a)]                     region x category cross
               + V[v(a) mod 64]                    advertiser effect
               + bu(u) + qa(a)                     per-user and per-ad terms, N(0, 0.5^2)
               + P[p]                              position

Users and ads are drawn from long-tailed activity (Zipf exponent `zipf` < 1 over ranks, mapped
to ids by a bijection), so most ids have a few rows and a head of ids has many.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.features import mix64
from models.provenance import code_version, machine
from offline.data.dataset import files_sha256
from offline.metrics import auc, logloss

__all__ = ["ScaleWorldConfig", "generate_scale_world", "true_logits"]

log = logging.getLogger(__name__)

SEGMENTS, REGIONS, CATEGORIES, ADVERTISERS, SLOTS, INTERESTS, DIM = 64, 32, 256, 50_000, 5, 3, 8
CHUNK = 1 << 20  # rows generated at a time
ROW_GROUP = 1 << 17
_KEYS = {  # per-field hash keys
    "segment": 0x5EED_0001,
    "region": 0x5EED_0002,
    "user_bias": 0x5EED_0003,
    "category": 0x5EED_0004,
    "advertiser": 0x5EED_0005,
    "ad_quality": 0x5EED_0006,
}


@dataclass(frozen=True)
class ScaleWorldConfig:
    """Size and seed of a scale world.

    Args:
        ads, users, rows: entity and impression counts.
        seed: seeds the click model's tables and every draw; the same config gives the same rows.
        zipf: long-tail exponent of user and ad activity, in [0, 1) (0: uniform).
        rows_per_shard: rows per Parquet file.
        valid_fraction, test_fraction: the time-ordered split.
        hash_buckets: embedding buckets of the hashed user and ad ids in the schema file
            (0: the next power of two above the id count, at most 2^22).
    """

    ads: int = 10_000_000
    users: int = 50_000_000
    rows: int = 100_000_000
    seed: int = 0
    zipf: float = 0.5
    rows_per_shard: int = 4_000_000
    valid_fraction: float = 0.05
    test_fraction: float = 0.1
    hash_buckets: int = 0

    def __post_init__(self) -> None:
        if min(self.ads, self.users, self.rows, self.rows_per_shard) < 1:
            raise ValueError("ads, users, rows and rows_per_shard must be positive")
        if not 0.0 <= self.zipf < 1.0:
            raise ValueError(f"zipf must be in [0, 1), got {self.zipf}")
        if min(self.valid_fraction, self.test_fraction) <= 0 or self.valid_fraction + self.test_fraction >= 0.5:
            raise ValueError("valid_fraction and test_fraction must be positive and sum to under 0.5")
        if self.rows * self.valid_fraction < 1 or self.rows * self.test_fraction < 1:
            raise ValueError(f"{self.rows} rows leave no validation or test rows")

    def buckets(self, n: int) -> int:
        return self.hash_buckets or min(1 << max(int(n - 1).bit_length(), 4), 1 << 22)


@dataclass(frozen=True)
class _Tables:
    interests: np.ndarray  # (SEGMENTS, INTERESTS, DIM)
    categories: np.ndarray  # (CATEGORIES, DIM)
    region_category: np.ndarray  # (REGIONS, CATEGORIES)
    advertiser: np.ndarray  # (64,)
    slot: np.ndarray  # (SLOTS,)
    bias: float


def _tables(seed: int) -> _Tables:
    rng = np.random.default_rng([seed, 1])
    return _Tables(
        interests=rng.normal(0, 0.55, (SEGMENTS, INTERESTS, DIM)),
        categories=rng.normal(0, 0.55, (CATEGORIES, DIM)),
        region_category=rng.normal(0, 0.35, (REGIONS, CATEGORIES)),
        advertiser=rng.normal(0, 0.3, 64),
        slot=-np.array([0.0, 0.3, 0.5, 0.7, 0.9])[:SLOTS],
        bias=-3.3,
    )


def _field(ids: np.ndarray, name: str, seed: int) -> np.ndarray:
    """A uint64 hash of each id, keyed per field and seed: the id's value of that field."""
    key = np.uint64((_KEYS[name] * 0x9E3779B97F4A7C15 + seed) % (1 << 64))
    return mix64(ids.astype(np.uint64) ^ key)


def _normal(ids: np.ndarray, name: str, seed: int) -> np.ndarray:
    """A standard normal per id (Box-Muller on two halves of the id's hash)."""
    h = _field(ids, name, seed)
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)
    u2 = ((h & np.uint64((1 << 24) - 1)).astype(np.float64) + 0.5) / float(1 << 24)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def entity_fields(users: np.ndarray, ads: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The observed fields of users and ads given their ids."""
    return {
        "segment": (_field(users, "segment", seed) % np.uint64(SEGMENTS)).astype(np.int16),
        "region": (_field(users, "region", seed) % np.uint64(REGIONS)).astype(np.int16),
        "category": (_field(ads, "category", seed) % np.uint64(CATEGORIES)).astype(np.int16),
        "advertiser": (_field(ads, "advertiser", seed) % np.uint64(ADVERTISERS)).astype(np.int32),
    }


def true_logits(
    users: np.ndarray, ads: np.ndarray, slots: np.ndarray, seed: int, fields: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """The click logit of (user, ad, slot) rows."""
    t = _tables(seed)
    f = fields if fields is not None else entity_fields(users, ads, seed)
    seg, reg, cat, adv = (f[k].astype(np.int64) for k in ("segment", "region", "category", "advertiser"))
    maxsim = np.einsum("bkd,bd->bk", t.interests[seg], t.categories[cat]).max(axis=1)
    return (
        t.bias
        + maxsim
        + t.region_category[reg, cat]
        + t.advertiser[adv % 64]
        + 0.5 * _normal(users, "user_bias", seed)
        + 0.5 * _normal(ads, "ad_quality", seed)
        + t.slot[slots]
    )


def _long_tail(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """Ids 1..n drawn with P(rank <= k) = (k/n)^(1-exponent), ranks mapped to ids by a bijection."""
    ranks = np.minimum((n * rng.random(size) ** (1.0 / (1.0 - exponent))).astype(np.int64), n - 1)
    stride = 0x9E3779B1 % n or 1
    while np.gcd(stride, n) != 1:
        stride += 1
    return (ranks * stride) % n + 1


def _chunk(config: ScaleWorldConfig, start: int, size: int) -> tuple[pa.Table, np.ndarray]:
    """Rows start..start+size: the table and their true click probabilities."""
    rng = np.random.default_rng([config.seed, 2, start])
    users = _long_tail(rng, config.users, size, config.zipf)
    ads = _long_tail(rng, config.ads, size, config.zipf)
    slots = rng.integers(0, SLOTS, size)
    fields = entity_fields(users, ads, config.seed)
    p = 1.0 / (1.0 + np.exp(-true_logits(users, ads, slots, config.seed, fields)))
    clicks = (rng.random(size) < p).astype(np.int8)
    ts = 1_700_000_000 + (np.arange(start, start + size) * (30 * 86_400 / config.rows)).astype(np.int64)
    table = pa.table(
        {
            "ts": ts,
            "user_id": users,
            "segment": fields["segment"],
            "region": fields["region"],
            "slot": slots.astype(np.int8),
            "ad_id": ads,
            "category": fields["category"],
            "advertiser": fields["advertiser"],
            "click": clicks,
        }
    )
    return table, p


def _schema_toml(config: ScaleWorldConfig) -> str:
    user_buckets, ad_buckets = config.buckets(config.users), config.buckets(config.ads)
    return f"""# A scale world (offline/scale_world.py): clicks from a known function; see reference.json.
name = "scale-world"
user_key = "user_id"
ad_key = "ad_id"
label = "click"
timestamp = "ts"

[splits]
train = ["train/*.parquet"]
valid = ["valid/*.parquet"]
test = ["test/*.parquet"]

[[features]]
column = "user_id"
side = "user"
kind = "sparse"
hash_buckets = {user_buckets}
hash = "splitmix64"
dim = 16

[[features]]
column = "segment"
side = "user"
kind = "sparse"
static = true

[[features]]
column = "region"
side = "user"
kind = "sparse"
static = true

[[features]]
column = "slot"
side = "context"
kind = "sparse"

[[features]]
column = "ad_id"
side = "ad"
kind = "sparse"
hash_buckets = {ad_buckets}
hash = "splitmix64"
dim = 16

[[features]]
column = "category"
side = "ad"
kind = "sparse"
static = true

[[features]]
column = "advertiser"
side = "ad"
kind = "sparse"
static = true
"""


def generate_scale_world(config: ScaleWorldConfig, out: Path) -> dict[str, Any]:
    """Writes the shards, schema.toml and reference.json; returns the reference."""
    started = time.perf_counter()
    out = Path(out)
    n_test = max(round(config.rows * config.test_fraction), 1)
    n_valid = max(round(config.rows * config.valid_fraction), 1)
    first_valid, first_test = config.rows - n_valid - n_test, config.rows - n_test
    bounds = {"train": (0, first_valid), "valid": (first_valid, first_test), "test": (first_test, config.rows)}
    test_p: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    files: list[Path] = []
    positives = {name: 0 for name in bounds}
    for name, (lo, hi) in bounds.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("part-*.parquet"):
            old.unlink()
        for shard, shard_lo in enumerate(range(lo, hi, config.rows_per_shard)):
            shard_hi = min(shard_lo + config.rows_per_shard, hi)
            path = folder / f"part-{shard:05d}.parquet"
            writer: pq.ParquetWriter | None = None
            for chunk_lo in range(shard_lo, shard_hi, CHUNK):
                table, p = _chunk(config, chunk_lo, min(CHUNK, shard_hi - chunk_lo))
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=ROW_GROUP)
                labels = table.column("click").to_numpy()
                positives[name] += int(labels.sum())
                if name == "test":
                    test_p.append(p.astype(np.float32))
                    test_y.append(labels.astype(np.float32))
            assert writer is not None
            writer.close()
            files.append(path)
        log.info("%s: %d rows written (%.0fs)", name, hi - lo, time.perf_counter() - started)
    (out / "schema.toml").write_text(_schema_toml(config))
    probs, labels = np.concatenate(test_p), np.concatenate(test_y)
    rows = {name: hi - lo for name, (lo, hi) in bounds.items()}
    reference = {
        "world": "scale",
        "config": asdict(config),
        "rows": rows,
        "positive_rate": {name: positives[name] / max(rows[name], 1) for name in rows},
        "bayes": {"auc": auc(labels, probs), "logloss": logloss(labels, probs)},
        "shards": {name: len(list((out / name).glob("part-*.parquet"))) for name in rows},
        "bytes": sum(f.stat().st_size for f in files),
        "schema_file": "schema.toml",
        "data_sha256": files_sha256(files),
        "generate_seconds": time.perf_counter() - started,
        "code_version": code_version(),
        "machine": machine(),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    return reference
