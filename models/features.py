"""Feature schema, vocabularies and the in-memory feature batch shared by every model.

A schema tags each field with the side it belongs to (user / ad / context) and its kind
(sparse id, dense scalar, sequence of ids). The offline job writes it into every artifact and
the service rebuilds models and encodes raw request values from it, so both sides agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "Features",
    "FeatureSchema",
    "FeatureSpec",
    "Jagged",
    "Kind",
    "Side",
    "Vocabulary",
    "default_features",
]


class Side(StrEnum):
    """Which tower a field feeds. Context fields travel with the request, like the user."""

    USER = "user"
    AD = "ad"
    CONTEXT = "context"


class Kind(StrEnum):
    """How a field is represented."""

    SPARSE = "sparse"  # one categorical id per row
    DENSE = "dense"  # one float per row
    SEQUENCE = "sequence"  # a variable-length list of ids, mean-pooled


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
    """

    name: str
    side: Side
    kind: Kind
    vocab: str | None = None
    static: bool = False

    def __post_init__(self) -> None:
        if self.kind is not Kind.DENSE and not self.vocab:
            raise ValueError(f"feature {self.name!r}: {self.kind.value} features need a vocab")


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
        return {
            "features": [{**asdict(f), "side": f.side.value, "kind": f.kind.value} for f in self.features],
            "vocab_sizes": dict(self.vocab_sizes),
        }

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
            )
            for f in raw
        )
        return cls(features=specs, vocab_sizes={str(k): int(v) for k, v in sizes.items()})


class Vocabulary:
    """Maps raw values (as strings) to ids 1..N; anything unseen maps to 0 (the OOV/padding id)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = list(tokens)
        self._index = {t: i + 1 for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def fit(cls, values: object) -> Vocabulary:
        """Builds a vocabulary of the distinct values, sorted for determinism."""
        uniq = np.unique(np.asarray(values).astype(str))
        return cls([str(u) for u in uniq])

    def encode(self, values: object) -> np.ndarray:
        """Encodes an iterable of raw values to an int64 array (unknown -> 0)."""
        get = self._index.get
        return np.fromiter((get(str(v), 0) for v in values), dtype=np.int64)  # type: ignore[attr-defined]

    def encode_one(self, value: object) -> int:
        return self._index.get(str(value), 0)


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
