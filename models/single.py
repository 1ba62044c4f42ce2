"""Single-tower CTR models: COLD (the pre-ranking latency reference) and the ranking references
LR, DeepFM and DCN.

None of them can precompute an ad representation: user and ad fields meet in the first layer.
They still fit the shared interface. `encode_user` and `encode_ad` return each side's *embedded
features* (field embeddings, dense values and the side's partial linear logit, flattened) and
`score` runs the whole network on every (user, ad) pair. The index therefore stores each ad's
embedded features (the embedding lookups done once, offline), and serving pays one full network
forward per candidate. That is the cost these models are the reference for.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel
from models.features import Features, FeatureSchema
from models.layers import (
    MLP,
    FieldEmbedding,
    FieldLinear,
    IdDrift,
    IdMatch,
    IdPairs,
    check_wide,
    drift_fields,
    embedding_l2,
    without_wide,
)

__all__ = ["COLD", "DCN", "LR", "COLDConfig", "DCNConfig", "DeepFM", "DeepFMConfig", "LRConfig", "SingleTower"]


@dataclass(frozen=True)
class SingleTowerConfig(ModelConfig):
    """Shared settings; hidden widths follow the reference code's DNNs (300, 300, 128).

    Args:
        linear: add the LR part (one weight per id) to the logit.
        wide: fields read only by the LR part, not embedded into the network (needs `linear`):
            raw ids with few rows each become L2-shrunk per-id weights the network cannot memorise.
        drift: dense user or context fields (an impression's time) on which every ad-side id gets
            its own slope (`models.layers.IdDrift`), added to the logit beside the linear part.
        match: add the exact, position-weighted matches of the ad's ids in the user's behaviour
            sequences of their vocabulary (`models.layers.IdMatch`) to the logit beside the linear part.
        pairs: add a free weight per (narrow user or context id, ad-side id) pair, segment x category
            (`models.layers.IdPairs`), to the logit beside the linear part.
    """

    hidden: tuple[int, ...] = (300, 300, 128)
    linear: bool = True
    wide: tuple[str, ...] = ()
    drift: tuple[str, ...] = ()
    match: bool = False
    pairs: bool = False

    def __post_init__(self) -> None:
        check_wide(self.wide, self.linear)


class SingleTower(PrerankModel):
    """Embeds each side separately; `head` combines all fields of a pair into a logit."""

    precomputes_ads = False

    def __init__(self, schema: FeatureSchema, config: SingleTowerConfig) -> None:
        super().__init__(schema, config)
        self.config: SingleTowerConfig = config
        dim = config.embedding_dim
        # fields of one vocabulary share a table across the sides (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        self.user_embedding = FieldEmbedding(without_wide(schema.user_fields, schema, config.wide), schema, dim, shared)
        self.ad_embedding = FieldEmbedding(without_wide(schema.ad_fields, schema, config.wide), schema, dim, shared)
        self.user_linear = FieldLinear(schema.user_fields, schema) if config.linear else None
        self.ad_linear = FieldLinear(schema.ad_fields, schema) if config.linear else None
        self.drift = IdDrift(schema.ad_fields, schema, drift_fields(schema, config.drift)) if config.drift else None
        self.match = IdMatch(schema) if config.match else None
        self.pairs = IdPairs(schema) if config.pairs else None
        self.n_fields = len(self.user_embedding.embedded) + len(self.ad_embedding.embedded)
        self.n_dense = len(self.user_embedding.dense) + len(self.ad_embedding.dense)

    def _side(
        self, embedding: FieldEmbedding, linear: FieldLinear | None, features: Features, dot: torch.Tensor | None
    ) -> torch.Tensor:
        parts = embedding.embed(features) + embedding.dense_values(features)
        if linear is not None:
            parts.append(linear(features))
        if dot is not None:
            parts.append(dot)
        return torch.cat(parts, -1).unsqueeze(1)

    @property
    def dot_terms(self) -> list[IdDrift | IdMatch | IdPairs]:
        """The terms added as a dot product of a user-side and an ad-side vector: drift, match, pairs."""
        return [term for term in (self.drift, self.match, self.pairs) if term is not None]

    @property
    def dot_width(self) -> int:
        """Width of each side's dot-product half: the drift's k values, the match's M columns and
        the pairs' P columns."""
        return sum(term.width for term in self.dot_terms)

    def _dot_half(self, features: Features, side: str) -> torch.Tensor | None:
        """This side's half of the dot terms (their dot product is the terms' sum)."""
        parts = [getattr(term, side)(features) for term in self.dot_terms]
        return torch.cat(parts, -1) if parts else None

    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, 1, m_u * D + n_dense_u [+ 1] [+ k] [+ M] [+ P]): the user's embedded fields, dense
        values, linear part, drift values, match multi-hot and pair one-hots."""
        return self._side(self.user_embedding, self.user_linear, features, self._dot_half(features, "user"))

    def encode_ad(self, features: Features) -> torch.Tensor:
        """(N, 1, m_a * D + n_dense_a [+ 1] [+ k] [+ M] [+ P]): the ad's embedded fields, dense
        values, linear part, drift slopes, match one-hot and pair-table rows."""
        return self._side(self.ad_embedding, self.ad_linear, features, self._dot_half(features, "ad"))

    def _split(
        self, rows: torch.Tensor, embedding: FieldEmbedding
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fields (N, m, D), dense (N, n_dense), linear logit (N,), dot half (N, k + M + P)) of encoded rows."""
        d = self.config.embedding_dim
        m, nd = len(embedding.embedded), len(embedding.dense)
        end = rows.shape[1] - self.dot_width
        fields = rows[:, : m * d].view(len(rows), m, d)
        dense = rows[:, m * d : m * d + nd]
        linear = rows[:, m * d + nd : end].sum(-1)
        return fields, dense, linear, rows[:, end:]

    @property
    def deep_width(self) -> int:
        """Width of the flattened pair input: every field embedding and dense value."""
        return self.n_fields * self.config.embedding_dim + self.n_dense

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """The network on every (user, ad) pair, (N,)."""
        assert isinstance(ads, torch.Tensor)
        n = ads.shape[0]
        a = ads.reshape(n, -1).float()
        u = user.reshape(user.shape[0], -1).float().expand(n, -1)
        uf, ud, ul, ux = self._split(u, self.user_embedding)
        af, ad, al, ax = self._split(a, self.ad_embedding)
        return self.head(torch.cat([uf, af], 1), torch.cat([ud, ad], 1)) + ul + al + (ux * ax).sum(-1)

    @abstractmethod
    def head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logit (N,) from all field embeddings (N, m, D) and dense values (N, n_dense)."""

    def regularizer(self) -> torch.Tensor:
        total = embedding_l2(self.user_embedding, self.ad_embedding)
        for linear in (self.user_linear, self.ad_linear):
            if linear is not None:
                total = total + linear.l2()
        for term in (self.drift, self.pairs):
            if term is not None:
                total = total + term.l2()
        return total


@dataclass(frozen=True)
class LRConfig(SingleTowerConfig):
    """Logistic regression: the linear part alone."""


class LR(SingleTower):
    """Logistic regression over every id and dense value (the stored ad row is one number)."""

    name = "lr"
    config_class = LRConfig
    stage = "ranking"

    def __init__(self, schema: FeatureSchema, config: LRConfig) -> None:
        if not config.linear:
            raise ValueError("LR is the linear part; linear must be true")
        super().__init__(schema, config)
        self.bias = nn.Parameter(torch.zeros(()))

    def _side(
        self, embedding: FieldEmbedding, linear: FieldLinear | None, features: Features, dot: torch.Tensor | None
    ) -> torch.Tensor:
        assert linear is not None
        parts = [linear(features)] if dot is None else [linear(features), dot]
        return torch.cat(parts, -1).unsqueeze(1)

    def _split(
        self, rows: torch.Tensor, embedding: FieldEmbedding
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = rows[:, :0]
        return empty.view(len(rows), 0, 0), empty, rows[:, 0], rows[:, 1:]

    def head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(fields))

    def regularizer(self) -> torch.Tensor:
        assert self.user_linear is not None and self.ad_linear is not None
        total = self.user_linear.l2() + self.ad_linear.l2()
        for term in (self.drift, self.pairs):
            if term is not None:
                total = total + term.l2()
        return total


@dataclass(frozen=True)
class COLDConfig(SingleTowerConfig):
    """COLD settings: the reference code's DNN without BatchNorm.

    Args:
        se: SE feature gating, s_i = sigmoid(w_i . e_i + b_i) per field group (the paper's block).
    """

    batch_norm: bool = False
    se: bool = True


class COLD(SingleTower):
    """GwEN-style single tower with SE gating of each field group (Alibaba, 2020).

    The SE block gives every field group a scalar importance from its own embedding and scales
    the group by it; the paper ranks groups by that importance to pick the served feature set.
    `field_importance` returns the mean gates for that purpose.
    """

    name = "cold"
    config_class = COLDConfig

    def __init__(self, schema: FeatureSchema, config: COLDConfig) -> None:
        super().__init__(schema, config)
        self.config: COLDConfig = config
        d = config.embedding_dim
        self.gate_weight = nn.Parameter(torch.zeros(self.n_fields, d))
        self.gate_bias = nn.Parameter(torch.zeros(self.n_fields))
        self.dnn = MLP(self.deep_width, config.hidden, config.dropout, config.batch_norm)
        self.out = nn.Linear(self.dnn.out_dim, 1)

    def gates(self, fields: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(N, m) importance of each field group (fields `first` .. `first + m` of the schema)."""
        m = fields.shape[1]
        weight, bias = self.gate_weight[first : first + m], self.gate_bias[first : first + m]
        return torch.sigmoid((fields * weight).sum(-1) + bias)

    def _gated(self, fields: torch.Tensor, first: int = 0) -> torch.Tensor:
        return fields * self.gates(fields, first).unsqueeze(-1) if self.config.se else fields

    def head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.out(self.dnn(torch.cat([self._gated(fields).flatten(1), dense], 1))).squeeze(-1)

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """One user against N ads is computed column-wise, as COLD serves it: the SE gate is per
        field group, so the user's share of the first layer (W_user u + b) is computed once and
        broadcast, and only the ad columns and the layers above run per candidate."""
        assert isinstance(ads, torch.Tensor)
        n = ads.shape[0]
        if user.shape[0] != 1 or n == 1:
            return super().score(user, ads)
        uf, ud, ul, ux = self._split(user.reshape(1, -1).float(), self.user_embedding)
        af, ad, al, ax = self._split(ads.reshape(n, -1).float(), self.ad_embedding)
        mu, d = uf.shape[1], self.config.embedding_dim
        m, ndu = self.n_fields, ud.shape[1]
        first = self.dnn[0]
        assert isinstance(first, nn.Linear)
        w = first.weight
        user_part = self._gated(uf).flatten(1) @ w[:, : mu * d].T + ud @ w[:, m * d : m * d + ndu].T + first.bias
        ad_part = self._gated(af, mu).flatten(1) @ w[:, mu * d : m * d].T + ad @ w[:, m * d + ndu :].T
        hidden = ad_part + user_part
        for layer in list(self.dnn)[1:]:
            hidden = layer(hidden)
        return self.out(hidden).squeeze(-1) + ul + al + (ux * ax).sum(-1)


@dataclass(frozen=True)
class DeepFMConfig(SingleTowerConfig):
    """DeepFM: LR + factorisation machine over the field embeddings + DNN."""


class DeepFM(SingleTower):
    """DeepFM (Guo et al., 2017): linear part, pairwise FM interactions and a DNN, summed."""

    name = "deepfm"
    config_class = DeepFMConfig
    stage = "ranking"

    def __init__(self, schema: FeatureSchema, config: DeepFMConfig) -> None:
        super().__init__(schema, config)
        self.dnn = MLP(self.deep_width, config.hidden, config.dropout, config.batch_norm)
        self.out = nn.Linear(self.dnn.out_dim, 1)

    def head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1)
        deep = self.out(self.dnn(torch.cat([fields.flatten(1), dense], 1))).squeeze(-1)
        return fm + deep


@dataclass(frozen=True)
class DCNConfig(SingleTowerConfig):
    """DCN settings.

    Args:
        cross_layers: depth of the cross network.
        cross: "vector" (DCN, 2017: x_{l+1} = x_0 (w_l . x_l) + b_l + x_l, a rank-1 cross per layer)
            or "matrix" (DCN-V2, 2021: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, every pair of input
            coordinates crossed with its own weight).
    """

    cross_layers: int = 3
    cross: str = "vector"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cross not in ("vector", "matrix"):
            raise ValueError(f"cross must be 'vector' or 'matrix', got {self.cross!r}")


class DCN(SingleTower):
    """Deep & Cross Network (Wang et al., 2017; DCN-V2's matrix cross with `cross="matrix"`) beside a DNN."""

    name = "dcn"
    config_class = DCNConfig
    stage = "ranking"

    def __init__(self, schema: FeatureSchema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        width, layers = self.deep_width, config.cross_layers
        self.matrix = config.cross == "matrix"
        shape = (layers, width, width) if self.matrix else (layers, width)
        self.cross_w = nn.Parameter(torch.randn(shape) * width**-0.5)
        self.cross_b = nn.Parameter(torch.zeros(layers, width))
        self.dnn = MLP(width, config.hidden, config.dropout, config.batch_norm)
        self.out = nn.Linear(width + self.dnn.out_dim, 1)

    def head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([fields.flatten(1), dense], 1)
        x = x0
        for w, b in zip(self.cross_w, self.cross_b, strict=True):
            x = x0 * torch.addmm(b, x, w.T) + x if self.matrix else x0 * (x @ w).unsqueeze(-1) + b + x
        return self.out(torch.cat([x, self.dnn(x0)], 1)).squeeze(-1)
