"""DAT: Dual Augmented Two-tower (Meituan, DLP-KDD'21), as the paper defines it.

Each user and each ad owns a learned augmented vector (an embedding row keyed by its id) that
enters its tower beside the field embeddings. The Adaptive-Mimic Mechanism pulls, on positive
rows, the user's augmented vector toward the (detached) ad-tower output and the ad's toward the
(detached) user-tower output, so each tower carries a learned summary of the other side's
matches. The score is the cosine of the two tower outputs, times a temperature, plus a bias.
Served exactly like DSSM: the ad row is the normalised ad-tower output.

Not implemented: the Category Alignment Loss (it needs an item category with a majority class;
the paper's ablation credits it to long-tail categories, which the public benchmarks do not
report).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel
from models.features import Features, FeatureSchema, FeatureSpec, Kind
from models.layers import EMBEDDING_INIT_STD, MLP, FieldEmbedding, embedding_l2
from models.scoring import maxsim

__all__ = ["DAT", "DATConfig"]


@dataclass(frozen=True)
class DATConfig(ModelConfig):
    """DAT settings.

    Args:
        temperature: multiplies the cosine (1.0 = the published reference configuration).
        user_mimic_weight: lambda_1 of the user-side mimic loss (TorchEasyRec default 0.5).
        ad_mimic_weight: lambda_2 of the ad-side mimic loss.
        user_key: sparse user field keying the user's augmented vector ("" = the first one).
        ad_key: sparse ad field keying the ad's augmented vector ("" = the first one).
        share_tables: off by default for DAT: with the user's category history and the ad's
            category in one table, the synthetic set's test AUC fell from 0.635 / 0.576 to 0.555 /
            0.553 (seeds 5 / 6, tests/service/test_model_zoo_serving.py's setting).
    """

    share_tables: bool = False
    temperature: float = 1.0
    user_mimic_weight: float = 0.5
    ad_mimic_weight: float = 0.5
    user_key: str = ""
    ad_key: str = ""


def _key_field(fields: tuple[FeatureSpec, ...], name: str, side: str) -> FeatureSpec:
    sparse = [f for f in fields if f.kind is Kind.SPARSE]
    chosen = [f for f in sparse if f.name == name] if name else sparse[:1]
    if not chosen:
        raise ValueError(f"DAT needs a sparse {side} id field{f' named {name!r}' if name else ''}")
    return chosen[0]


class DAT(PrerankModel):
    """Two towers with learned augmented vectors and the adaptive-mimic loss; see the module docstring."""

    name = "dat"
    config_class = DATConfig
    ann_searchable = True

    def __init__(self, schema: FeatureSchema, config: DATConfig) -> None:
        super().__init__(schema, config)
        self.config: DATConfig = config
        width = config.hidden[-1]
        self.user_key = _key_field(schema.user_fields, config.user_key, "user")
        self.ad_key = _key_field(schema.ad_fields, config.ad_key, "ad")
        self.user_aug = nn.Embedding(schema.vocab_sizes[self.user_key.vocab or ""] + 1, width)
        self.ad_aug = nn.Embedding(schema.vocab_sizes[self.ad_key.vocab or ""] + 1, width)
        for table in (self.user_aug, self.ad_aug):
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
        # fields of one vocabulary share a table across the sides (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        self.user_embedding = FieldEmbedding(schema.user_fields, schema, config.embedding_dim, shared)
        self.ad_embedding = FieldEmbedding(schema.ad_fields, schema, config.embedding_dim, shared)
        self.user_tower = MLP(self.user_embedding.out_dim + width, config.hidden, config.dropout, config.batch_norm)
        self.ad_tower = MLP(self.ad_embedding.out_dim + width, config.hidden, config.dropout, config.batch_norm)
        self.bias = nn.Parameter(torch.zeros(()))

    def _user(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.user_aug(features[self.user_key.name])  # type: ignore[arg-type]
        h = self.user_tower(torch.cat([self.user_embedding(features), aug], -1))
        return F.normalize(h, dim=-1), aug

    def _ad(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.ad_aug(features[self.ad_key.name])  # type: ignore[arg-type]
        h = self.ad_tower(torch.cat([self.ad_embedding(features), aug], -1))
        return F.normalize(h, dim=-1), aug

    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, 1, d) unit vectors."""
        return self._user(features)[0].unsqueeze(1)

    def encode_ad(self, features: Features) -> torch.Tensor:
        """(N, 1, d) unit vectors."""
        return self._ad(features)[0].unsqueeze(1)

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """temperature * cos(p_u, p_v) + b, (N,)."""
        assert isinstance(ads, torch.Tensor)
        return maxsim(user, ads) * self.config.temperature + self.bias

    def forward_train(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        user, user_aug = self._user(features)
        ad, ad_aug = self._ad(features)
        logits = (user * ad).sum(-1) * self.config.temperature + self.bias
        return logits, {"user_repr": user, "ad_repr": ad, "user_aug": user_aug, "ad_aug": ad_aug}

    def regularizer(self) -> torch.Tensor:
        aug = self.user_aug.weight.pow(2).sum() + self.ad_aug.weight.pow(2).sum()
        return embedding_l2(self.user_embedding, self.ad_embedding) + aug
