"""DSSM two-tower baseline: cosine similarity of two MLP towers, times a temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel
from models.features import Features, FeatureSchema
from models.layers import MLP, FieldEmbedding, embedding_l2
from models.scoring import maxsim

__all__ = ["DSSM", "DSSMConfig"]


@dataclass(frozen=True)
class DSSMConfig(ModelConfig):
    """DSSM settings.

    Args:
        temperature: multiplies the cosine; 1.0 is the reference configuration of the
            published tables (it caps pCTR into a narrow band), larger values are the tuned model.
    """

    temperature: float = 1.0


class DSSM(PrerankModel):
    """Two MLP towers whose L2-normalised outputs meet in a dot product.

    The stored ad row is the normalised ad vector, (1, d), so the index layout matches the
    multi-head models with one head.
    """

    name = "dssm"
    config_class = DSSMConfig
    ann_searchable = True

    def __init__(self, schema: FeatureSchema, config: DSSMConfig) -> None:
        super().__init__(schema, config)
        self.config: DSSMConfig = config
        # fields of one vocabulary share a table across the sides (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        self.user_embedding = FieldEmbedding(schema.user_fields, schema, config.embedding_dim, shared)
        self.ad_embedding = FieldEmbedding(schema.ad_fields, schema, config.embedding_dim, shared)
        mlp = {"dropout": config.dropout, "batch_norm": config.batch_norm}
        self.user_tower = MLP(self.user_embedding.out_dim, config.hidden, **mlp)  # type: ignore[arg-type]
        self.ad_tower = MLP(self.ad_embedding.out_dim, config.hidden, **mlp)  # type: ignore[arg-type]
        self.bias = nn.Parameter(torch.zeros(()))

    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, 1, d) unit vectors."""
        h = self.user_tower(self.user_embedding(features))
        return F.normalize(h, dim=-1).unsqueeze(1)

    def encode_ad(self, features: Features) -> torch.Tensor:
        """(N, 1, d) unit vectors."""
        h = self.ad_tower(self.ad_embedding(features))
        return F.normalize(h, dim=-1).unsqueeze(1)

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """temperature * cos(u, a) + b, (N,)."""
        assert isinstance(ads, torch.Tensor)
        return maxsim(user, ads) * self.config.temperature + self.bias

    def regularizer(self) -> torch.Tensor:
        return embedding_l2(self.user_embedding, self.ad_embedding)
