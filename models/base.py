"""The interface every pre-ranking model implements.

`encode_user` runs once per request; `encode_ad` runs offline over the ad corpus and its output
rows are what the index stores; `score` combines one user representation with many ad rows.
`forward` on a batch of (user, ad) rows equals `score(encode_user(b), encode_ad(b))` row by row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from models.features import Features, FeatureSchema

__all__ = ["AdBatch", "ModelConfig", "PrerankModel", "Routed", "join_ads", "split_ads"]


class Routed(NamedTuple):
    """Ad rows that also name which of the user's K representations each ad is scored against.

    `vectors` (N, ...) are stored like any model's ad rows (and quantised the same way);
    `routes` (N,) int64 are stored exactly beside them (FIT's meta index).
    """

    vectors: torch.Tensor
    routes: torch.Tensor


#: What `encode_ad` returns and `score` takes: plain rows, or rows with routes.
AdBatch = torch.Tensor | Routed


def split_ads(ads: AdBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(vectors, routes or None) of an ad batch."""
    return (ads.vectors, ads.routes) if isinstance(ads, Routed) else (ads, None)


def join_ads(vectors: torch.Tensor, routes: torch.Tensor | None) -> AdBatch:
    """Inverse of `split_ads`."""
    return vectors if routes is None else Routed(vectors, routes)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters common to the towers; each model subclasses it with its own fields."""

    embedding_dim: int = 32
    hidden: tuple[int, ...] = (300, 300, 32)
    dropout: float = 0.3
    batch_norm: bool = True
    #: Fields that name one vocabulary share one embedding table across the user and the ad side
    #: (within a side they always do).
    share_tables: bool = True


class PrerankModel(nn.Module, ABC):
    """A CTR model split into a user side, a precomputable ad side and a cheap scorer."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: True when the stored ad rows are a tower output; False when they are the ad's embedded
    #: features and `score` runs the whole network per (user, ad) pair (single-tower models).
    precomputes_ads: ClassVar[bool] = True
    #: True when `score` is a sum over user heads of the max inner product over ad heads, so a
    #: FAISS index over the ad heads can retrieve from the whole corpus.
    ann_searchable: ClassVar[bool] = False
    #: "prerank" models are the product; "ranking" models are offline references.
    stage: ClassVar[str] = "prerank"

    def __init__(self, schema: FeatureSchema, config: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.config = config

    @abstractmethod
    def encode_user(self, features: Features) -> torch.Tensor:
        """User (and context) representation, (B, ...)."""

    @abstractmethod
    def encode_ad(self, features: Features) -> AdBatch:
        """Ad representation stored in the index, (N, ...) (with routes for routed models)."""

    @abstractmethod
    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """Logits, (N,).

        Args:
            user: (B, ...) from `encode_user`; B is 1 (one user against every ad) or N (paired).
            ads: (N, ...) from `encode_ad`.
        """

    def forward(self, features: Features) -> torch.Tensor:
        """Logits for paired (user, ad) rows, (B,)."""
        return self.score(self.encode_user(features), self.encode_ad(features))

    def forward_train(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits plus the intermediates that model-specific losses need (none by default)."""
        return self.forward(features), {}

    def regularizer(self) -> torch.Tensor:
        """Sum of squared embedding entries (weighted by the training config)."""
        return torch.zeros(())
