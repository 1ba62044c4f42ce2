"""Feature schema, vocabularies and the in-memory feature batch shared by every model.

A schema tags each field with the side it belongs to (user / ad / context) and its kind
(sparse id, dense scalar, sequence of ids). The offline job writes it into every artifact and
the service rebuilds models and encodes raw request values from it, so both sides agree.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "Features",
    "FeatureSchema",
    "FeatureSpec",
    "HashedVocabulary",
    "Jagged",
    "Kind",
    "POOLINGS",
    "Side",
    "Vocabulary",
    "HASHES",
    "default_features",
    "mix64",
    "move_features",
]

HASHES = ("blake2b", "splitmix64")


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class Side(StrEnum):
    """Which tower a field feeds. Context fields travel with the request, like the user."""

    USER = "user"
    AD = "ad"
    CONTEXT = "context"


class Kind(StrEnum):
    """How a field is represented."""

    SPARSE = "sparse"  # one categorical id per row
    DENSE = "dense"  # one float per row
    SEQUENCE = "sequence"  # a variable-length list of ids, pooled (mean, sum or recency-weighted)


#: "recency": a learned weight per position counted back from the newest id (max_len of them),
#: so the latest behaviour can count more than older ones; "mean" and "sum" weigh every id alike.
POOLINGS = ("mean", "sum", "recency")


class Jagged(NamedTuple):
    """A batch of variable-length id lists in `nn.EmbeddingBag` layout.

    `values` (T,) holds every id of the batch back to back; `offsets` (B,) the start of each row.
    """

    values: torch.Tensor
    offsets: torch.Tensor


Features = dict[str, "torch.Tensor | Jagged"]


@dataclass(frozen=True)
class FeatureSpec:
    """One input field.

    Args:
        name: column name in the data and key in requests.
        side: the tower that reads it.
        kind: sparse, dense or sequence.
        vocab: name of the vocabulary that encodes it (sparse and sequence only); fields may share one.
        static: slowly changing profile attribute (HIT generators read only these).
        dim: width of the field's embedding table (None: the model's embedding_dim); a narrower
            table is projected to the model's width.
        pooling: how a sequence's embeddings are pooled: "mean", "sum", or "recency" (a weighted
            sum with one learned weight per position back from the newest id; needs max_len).
        max_len: a sequence keeps its `max_len` most recent ids (None: all).
        newest_first: the sequence lists its newest id first (default: oldest first, as logs append).
        normalize: (mean, std) a dense value is standardised with, fitted on the training rows.
        boundaries: a dense value bucketed into a sparse id: id = 1 + number of boundaries <= value.
    """

    name: str
    side: Side
    kind: Kind
    vocab: str | None = None
    static: bool = False
    dim: int | None = None
    pooling: str = "mean"
    max_len: int | None = None
    newest_first: bool = False
    normalize: tuple[float, float] | None = None
    boundaries: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind is not Kind.DENSE and not self.vocab:
            raise ValueError(f"feature {self.name!r}: {self.kind.value} features need a vocab")
        if self.pooling not in POOLINGS:
            raise ValueError(f"feature {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "recency" and self.max_len is None:
            raise ValueError(f"feature {self.name!r}: recency pooling needs max_len (one weight per position)")
        if self.normalize is not None and not self.normalize[1] > 0:
            raise ValueError(f"feature {self.name!r}: normalize std must be positive")

    def truncate(self, ids: np.ndarray) -> np.ndarray:
        """A sequence's ids cut to its `max_len` most recent ones."""
        if self.max_len is None or len(ids) <= self.max_len:
            return ids
        return ids[: self.max_len] if self.newest_first else ids[len(ids) - self.max_len :]

    def bucketize(self, values: object) -> np.ndarray:
        """Bucket ids (1..len(boundaries)+1) of dense values; NaN -> 0 (unknown)."""
        x = np.asarray(values, dtype=np.float64)
        ids = np.searchsorted(np.asarray(self.boundaries or (), np.float64), x, side="right") + 1
        return np.where(np.isnan(x), 0, ids).astype(np.int64)


@dataclass(frozen=True)
class FeatureSchema:
    """All fields of a dataset plus the vocabulary sizes (ids 1..size; 0 is padding / unknown)."""

    features: tuple[FeatureSpec, ...]
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    def side(self, *sides: Side) -> tuple[FeatureSpec, ...]:
        """Fields of the given sides, in schema order."""
        return tuple(f for f in self.features if f.side in sides)

    @property
    def user_fields(self) -> tuple[FeatureSpec, ...]:
        return self.side(Side.USER, Side.CONTEXT)

    @property
    def ad_fields(self) -> tuple[FeatureSpec, ...]:
        return self.side(Side.AD)

    def to_dict(self) -> dict[str, object]:
        defaults = FeatureSpec("", Side.USER, Kind.DENSE)
        optional = ("dim", "pooling", "max_len", "newest_first", "normalize", "boundaries")
        features = []
        for f in self.features:
            entry = {**asdict(f), "side": f.side.value, "kind": f.kind.value}
            for key in optional:  # written only when set, so older artifacts' bytes do not change
                if getattr(f, key) == getattr(defaults, key):
                    entry.pop(key)
                elif isinstance(entry[key], tuple):
                    entry[key] = list(entry[key])
            features.append(entry)
        return {"features": features, "vocab_sizes": dict(self.vocab_sizes)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSchema:
        raw = data["features"]
        sizes = data.get("vocab_sizes", {})
        if not isinstance(raw, list) or not isinstance(sizes, dict):
            raise ValueError("schema: 'features' must be a list and 'vocab_sizes' a mapping")
        specs = tuple(
            FeatureSpec(
                name=f["name"],
                side=Side(f["side"]),
                kind=Kind(f["kind"]),
                vocab=f.get("vocab"),
                static=bool(f.get("static", False)),
                dim=f.get("dim"),
                pooling=f.get("pooling", "mean"),
                max_len=f.get("max_len"),
                newest_first=bool(f.get("newest_first", False)),
                normalize=tuple(f["normalize"]) if f.get("normalize") is not None else None,
                boundaries=tuple(f["boundaries"]) if f.get("boundaries") is not None else None,
            )
            for f in raw
        )
        return cls(features=specs, vocab_sizes={str(k): int(v) for k, v in sizes.items()})


class Vocabulary:
    """Maps raw values (as strings) to ids 1..N; anything unseen maps to 0 (the OOV/padding id).

    `Vocabulary.fit(values, min_count=k)` keeps the values seen at least k times; rarer ones share
    the OOV id 0 with unseen ones. `HashedVocabulary` replaces the token list by hashed buckets.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = list(tokens)
        # The token -> id map is built on the first encode: a server never encodes an ad-side
        # vocabulary (its ads come encoded in the index), and the map of 1M ad ids would hold
        # ~90 MB per loaded version. Strictly ascending tokens (what `fit` writes) are unique.
        if any(a >= b for a, b in itertools.pairwise(self.tokens)) and len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    def prepare(self) -> None:
        """Builds the token -> id map now (a server does, for the vocabularies requests use)."""
        _ = self._index

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i + 1 for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def fit(cls, values: object, min_count: int = 1) -> Vocabulary:
        """Builds a vocabulary of the distinct values seen `min_count` times or more, sorted."""
        uniq, counts = np.unique(np.asarray(values).astype(str), return_counts=True)
        return cls([str(u) for u in uniq[counts >= min_count]])

    def to_json(self) -> object:
        """What vocab.json stores for this vocabulary."""
        return self.tokens

    @staticmethod
    def from_json(data: object) -> Vocabulary:
        if isinstance(data, dict) and "hash_buckets" in data:
            return HashedVocabulary(int(data["hash_buckets"]), str(data.get("hash", "blake2b")))
        if not isinstance(data, list):
            raise ValueError('a vocabulary is a token list or {"hash_buckets": N}')
        return Vocabulary([str(t) for t in data])

    def encode(self, values: object) -> np.ndarray:
        """Encodes an iterable of raw values to an int64 array (unknown -> 0)."""
        get = self._index.get
        return np.fromiter((get(str(v), 0) for v in values), dtype=np.int64)  # type: ignore[attr-defined]

    def encode_one(self, value: object) -> int:
        return self._index.get(str(value), 0)


class HashedVocabulary(Vocabulary):
    """Ids 1..N from a stable 64-bit hash of the value, for id spaces too big to list.

    Nothing is fitted and nothing is unseen: distinct values may share a bucket. `hash` is
    "blake2b" (of the value's string form; any value) or "splitmix64" (of the value as a 64-bit
    integer, vectorised: what a log of 50M integer user ids needs; a value that is not an integer
    maps to 0, the unknown id).
    """

    def __init__(self, buckets: int, hash: str = "blake2b") -> None:
        if buckets < 1:
            raise ValueError(f"hash_buckets must be positive, got {buckets}")
        if hash not in HASHES:
            raise ValueError(f"hash must be one of {HASHES}, got {hash!r}")
        super().__init__([])
        self.buckets = buckets
        self.hash = hash

    def __len__(self) -> int:
        return self.buckets

    def to_json(self) -> object:
        if self.hash == "blake2b":  # as artifacts wrote it before the hash key
            return {"hash_buckets": self.buckets}
        return {"hash_buckets": self.buckets, "hash": self.hash}

    def encode_one(self, value: object) -> int:
        if self.hash == "splitmix64":
            try:
                number = int(str(value))
            except ValueError:
                return 0
            return int(self.encode_integers(np.array([number], np.int64))[0])
        digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.buckets + 1

    def encode_integers(self, values: np.ndarray) -> np.ndarray:
        """Bucket ids of int64 values (splitmix64 only), vectorised."""
        if self.hash != "splitmix64":
            raise ValueError("encode_integers is for a splitmix64-hashed vocabulary")
        hashed = mix64(np.asarray(values, np.int64).view(np.uint64))
        return (hashed % np.uint64(self.buckets)).astype(np.int64) + 1

    def encode(self, values: object) -> np.ndarray:
        if self.hash == "splitmix64":
            array = np.asarray(values)
            if array.dtype.kind in "iu":
                return self.encode_integers(array.astype(np.int64))
        return np.fromiter((self.encode_one(v) for v in values), dtype=np.int64)  # type: ignore[attr-defined]


def move_features(feats: Features, device: str | torch.device) -> Features:
    """The same inputs on `device`."""
    return {
        k: Jagged(v.values.to(device), v.offsets.to(device)) if isinstance(v, Jagged) else v.to(device)
        for k, v in feats.items()
    }


def default_features(fields: tuple[FeatureSpec, ...], rows: int = 1) -> Features:
    """Inputs for `rows` entities with nothing known: id 0 (unknown), 0.0, empty sequences."""
    out: Features = {}
    for f in fields:
        if f.kind is Kind.DENSE:
            out[f.name] = torch.zeros(rows)
        elif f.kind is Kind.SEQUENCE:
            out[f.name] = Jagged(torch.zeros(0, dtype=torch.int64), torch.zeros(rows, dtype=torch.int64))
        else:
            out[f.name] = torch.zeros(rows, dtype=torch.int64)
    return out
