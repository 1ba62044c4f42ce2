"""IntTower: Interaction-enhanced Two-Tower (Huawei, CIKM'22).

Each tower re-weights its field embeddings with Light-SE and runs an MLP. A FE-Block per user
layer projects that layer's output into H_u heads of width p; the ad side projects its last layer
into H_a heads. The logit is the sum over blocks and user heads of the best ad head's dot product
(sum-max), so the stored ad row is the (H_a, p) head matrix and the user side stacks its blocks
as L * H_u heads: scoring is the same MaxSim as HIT's.

CIR (contrastive interaction regularisation) is the paper's InfoNCE over the positive rows of a
batch with the other positives' ads as negatives, on the last block; off by default (weight 0),
as in the public code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel
from models.features import Features, FeatureSchema, FeatureSpec
from models.layers import MLP, FieldEmbedding, LightSE, embedding_l2
from models.scoring import maxsim

__all__ = ["IntTower", "IntTowerConfig"]


@dataclass(frozen=True)
class IntTowerConfig(ModelConfig):
    """IntTower settings (MovieLens script of the reference code; heads 2x2, the paper's best).

    Args:
        user_heads: H_u heads per FE-Block.
        ad_heads: H_a heads of the ad projection.
        head_dim: p.
        cir_weight: lambda_1 of the contrastive regulariser (0 = off).
        cir_temperature: tau of the InfoNCE.
    """

    hidden: tuple[int, ...] = (300, 300, 128)
    user_heads: int = 2
    ad_heads: int = 2
    head_dim: int = 64
    cir_weight: float = 0.0
    cir_temperature: float = 0.07


class _Tower(nn.Module):
    """Light-SE -> MLP layers, keeping every layer's output."""

    def __init__(
        self,
        fields: tuple[FeatureSpec, ...],
        schema: FeatureSchema,
        config: IntTowerConfig,
        shared: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(fields, schema, config.embedding_dim, shared)
        self.se = LightSE(len(self.embedding.embedded)) if self.embedding.embedded else None
        self.layers = nn.ModuleList()
        width = self.embedding.out_dim
        for out in config.hidden:
            self.layers.append(MLP(width, (out,), config.dropout, config.batch_norm))
            width = out

    def forward(self, features: Features) -> list[torch.Tensor]:
        parts = []
        embedded = self.embedding.embed(features)
        if self.se is not None:
            parts.append(self.se(torch.stack(embedded, 1)).flatten(1))
        x = torch.cat(parts + self.embedding.dense_values(features), -1)
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class IntTower(PrerankModel):
    """Light-SE towers, FE-Blocks on every user layer, sum-max scoring; see the module docstring."""

    name = "inttower"
    config_class = IntTowerConfig
    ann_searchable = True

    def __init__(self, schema: FeatureSchema, config: IntTowerConfig) -> None:
        super().__init__(schema, config)
        self.config: IntTowerConfig = config
        # fields of one vocabulary share a table across the towers (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        self.user_tower = _Tower(schema.user_fields, schema, config, shared)
        self.ad_tower = _Tower(schema.ad_fields, schema, config, shared)
        self.user_blocks = nn.ModuleList(nn.Linear(w, config.user_heads * config.head_dim) for w in config.hidden)
        self.ad_block = nn.Linear(config.hidden[-1], config.ad_heads * config.head_dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, L * H_u, p): every FE-Block's heads, stacked."""
        layers = self.user_tower(features)
        heads = [
            block(h).view(h.shape[0], self.config.user_heads, -1)
            for block, h in zip(self.user_blocks, layers, strict=True)
        ]
        return torch.cat(heads, 1)

    def encode_ad(self, features: Features) -> torch.Tensor:
        """(N, H_a, p)."""
        last = self.ad_tower(features)[-1]
        return self.ad_block(last).view(last.shape[0], self.config.ad_heads, -1)

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """sum over blocks and user heads of max over ad heads of the dot product, + b, (N,)."""
        assert isinstance(ads, torch.Tensor)
        return maxsim(user, ads) + self.bias

    def forward_train(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        user, ad = self.encode_user(features), self.encode_ad(features)
        last_block = user[:, -self.config.user_heads :].flatten(1)
        return self.score(user, ad), {"user_repr": last_block, "ad_repr": ad.flatten(1)}

    def regularizer(self) -> torch.Tensor:
        return embedding_l2(self.user_tower.embedding, self.ad_tower.embedding)
