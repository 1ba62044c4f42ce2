"""FIT: learnable Fully Interacted Two-tower (Ant Group, arXiv 2509.12948), best reading of MODELS.md §5.

Meta Query Module. A trainable meta matrix Q (K rows in the ad-embedding space) stands in for
the candidate ad inside the user tower. Each ad is assigned to its most similar row,
k*(v) = argmax_k softmax(e_v Q^T / sqrt(d)). That row, projected to the sequence-embedding
width, is the target of a DIN attention over the user's behaviour sequence. The attended
history, the query and the user's own fields feed the user MLP. Training uses the hard choice
in the forward pass and the softmax's gradient in the backward pass (straight-through), or, as
an option, a softmax mixture of the rows whose temperature anneals from 1 to `anneal_to` over
`anneal_steps` training batches, so that training ends on the hard choice. At
serving the user side runs once for every meta row, giving K user representations, and each ad
picks its row by the meta index stored beside its vectors.

Lightweight Similarity Scorer. Both sides are projected into heads, the head-pair similarity
matrix S (H_u x H_a) goes through a row-wise FC, a column-wise FC (ReLU after each) and a final
linear layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel, Routed
from models.features import Features, FeatureSchema, Jagged, Kind
from models.layers import EMBEDDING_INIT_STD, MLP, FieldEmbedding, embedding_l2, jagged_to_padded

__all__ = ["FIT", "FITConfig"]


@dataclass(frozen=True)
class FITConfig(ModelConfig):
    """FIT settings (defaults: MODELS.md §5.5).

    Args:
        meta_rows: K, rows of the meta matrix.
        user_heads / ad_heads / head_dim: the LSS projections (H_u, H_a, p).
        row_width / col_width: widths r and c of the row-wise and column-wise FCs.
        behaviour: user sequence field attended by DIN ("" = the first user sequence field).
        max_behaviour: ids of the sequence attended per user (the first ones).
        attention_hidden: width of DIN's attention MLP.
        behaviour_pooling: "mean" divides DIN's weighted sum by the history length; "sum" keeps
            it, as the DIN paper does (so the pooled vector also grows with the history).
        anneal_steps: 0 = straight-through hard assignment in training; > 0 = a softmax
            mixture of meta rows whose temperature falls geometrically from 1 to `anneal_to`
            over this many training batches, then stays there. Evaluation and serving always
            use the hard choice.
        anneal_to: final temperature of the annealed mixture.
    """

    hidden: tuple[int, ...] = (300, 300, 128)
    meta_rows: int = 32
    user_heads: int = 4
    ad_heads: int = 4
    head_dim: int = 16
    row_width: int = 8
    col_width: int = 8
    behaviour: str = ""
    max_behaviour: int = 50
    attention_hidden: int = 32
    behaviour_pooling: str = "mean"
    anneal_steps: int = 0
    anneal_to: float = 1e-3


class FIT(PrerankModel):
    """Meta-query early interaction plus LSS scoring; see the module docstring."""

    name = "fit"
    config_class = FITConfig
    anneal_step: torch.Tensor

    def __init__(self, schema: FeatureSchema, config: FITConfig) -> None:
        super().__init__(schema, config)
        self.config: FITConfig = config
        d = config.embedding_dim
        # fields of one vocabulary share a table across the sides (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        self.user_embedding = FieldEmbedding(schema.user_fields, schema, d, shared)
        self.ad_embedding = FieldEmbedding(schema.ad_fields, schema, d, shared)
        meta_dim = self.ad_embedding.out_dim
        self.meta = nn.Parameter(torch.empty(config.meta_rows, meta_dim))
        nn.init.kaiming_uniform_(self.meta, a=math.sqrt(5))
        self.query = nn.Linear(meta_dim, d)
        sequences = [f for f in schema.user_fields if f.kind is Kind.SEQUENCE]
        chosen = [f for f in sequences if f.name == config.behaviour] if config.behaviour else sequences[:1]
        if config.behaviour and not chosen:
            raise ValueError(f"FIT behaviour field {config.behaviour!r} is not a user sequence field")
        self.behaviour = chosen[0] if chosen else None
        if config.behaviour_pooling not in ("mean", "sum"):
            raise ValueError(f"FIT behaviour_pooling must be 'mean' or 'sum', got {config.behaviour_pooling!r}")
        extra = d  # the projected query
        if self.behaviour is not None:
            self.behaviour_table = nn.Embedding(schema.vocab_sizes[self.behaviour.vocab or ""] + 1, d)
            nn.init.normal_(self.behaviour_table.weight, std=EMBEDDING_INIT_STD)
            self.attention = nn.Sequential(
                nn.Linear(4 * d, config.attention_hidden), nn.ReLU(), nn.Linear(config.attention_hidden, 1)
            )
            extra += d
        self.user_tower = MLP(self.user_embedding.out_dim + extra, config.hidden, config.dropout, config.batch_norm)
        self.ad_tower = MLP(meta_dim, config.hidden, config.dropout, config.batch_norm)
        self.user_heads = nn.Linear(self.user_tower.out_dim, config.user_heads * config.head_dim)
        self.ad_heads = nn.Linear(self.ad_tower.out_dim, config.ad_heads * config.head_dim)
        self.row_fc = nn.Linear(config.ad_heads, config.row_width)
        self.col_fc = nn.Linear(config.user_heads, config.col_width)
        self.out = nn.Linear(config.row_width * config.col_width, 1)
        # Training batches seen, for the annealed assignment; not saved, since evaluation and
        # serving use the hard choice whatever the schedule.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long), persistent=False)

    # --- meta query -------------------------------------------------------------------------
    def temperature(self) -> float:
        """The annealed mixture's current temperature (1 at the first batch, `anneal_to` at the end)."""
        progress = min(1.0, int(self.anneal_step) / max(1, self.config.anneal_steps))
        return float(self.config.anneal_to**progress)

    def assign(self, ad_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta rows of ads: (N,) hard indices and (N, K) selection weights.

        The weights are one-hot in the forward pass (straight-through softmax gradient), except in
        training with `anneal_steps` > 0, where they are the tempered softmax itself.
        """
        logits = ad_input @ self.meta.T / math.sqrt(self.meta.shape[1])
        routes = logits.argmax(-1)
        if self.training and self.config.anneal_steps > 0:
            return routes, torch.softmax(logits / self.temperature(), -1)
        soft = torch.softmax(logits, -1)
        hard = F.one_hot(routes, self.config.meta_rows).to(soft.dtype)
        return routes, hard + soft - soft.detach()

    def _user_heads(
        self, features: Features, queries: torch.Tensor, per_user: int, base: torch.Tensor | None = None
    ) -> torch.Tensor:
        """User heads for `per_user` queries per user: queries (B * per_user, meta_dim) -> (B * per_user, H_u, p).

        `base` is the user's embedded fields (B, F) when the caller has them already.
        """
        if base is None:
            base = self.user_embedding(features)
        b = base.shape[0]
        q = self.query(queries)  # (B * Q, D)
        parts = [base.repeat_interleave(per_user, 0), q]
        if self.behaviour is not None:
            seq = features[self.behaviour.name]
            assert isinstance(seq, Jagged)
            ids, mask = jagged_to_padded(seq, b, self.config.max_behaviour)
            items = self.behaviour_table(ids)  # (B, L, D)
            items = items.repeat_interleave(per_user, 0)
            mask = mask.repeat_interleave(per_user, 0)
            target = q.unsqueeze(1).expand_as(items)
            weights = self.attention(torch.cat([items, target, items - target, items * target], -1)).squeeze(-1)
            weights = weights.masked_fill(~mask, 0.0)
            pooled = (weights.unsqueeze(-1) * items).sum(1)
            if self.config.behaviour_pooling == "mean":
                pooled = pooled / mask.sum(1, keepdim=True).clamp_min(1)
            parts.append(pooled)
        heads = self.user_heads(self.user_tower(torch.cat(parts, -1)))
        return heads.view(-1, self.config.user_heads, self.config.head_dim)

    # --- interface --------------------------------------------------------------------------
    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, K, H_u, p): the user side against every meta row."""
        k = self.config.meta_rows
        base = self.user_embedding(features)
        b = base.shape[0]
        heads = self._user_heads(features, self.meta.repeat(b, 1), k, base)
        return heads.view(b, k, self.config.user_heads, self.config.head_dim)

    def _ad(self, features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ad_input = self.ad_embedding(features)
        routes, select = self.assign(ad_input)
        heads = self.ad_heads(self.ad_tower(ad_input)).view(-1, self.config.ad_heads, self.config.head_dim)
        return heads, routes, select

    def encode_ad(self, features: Features) -> Routed:
        """(N, H_a, p) heads with (N,) meta indices."""
        heads, routes, _ = self._ad(features)
        return Routed(heads, routes)

    def lss(self, user: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
        """LSS logits of paired (N, H_u, p) and (N, H_a, p) heads, (N,)."""
        sims = torch.bmm(user, ads.transpose(1, 2))  # (N, H_u, H_a)
        rows = F.relu(self.row_fc(sims))  # (N, H_u, r)
        cols = F.relu(self.col_fc(rows.transpose(1, 2)))  # (N, r, c)
        return self.out(cols.flatten(1)).squeeze(-1)

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """Each ad against the user representation of its meta row, (N,)."""
        assert isinstance(ads, Routed), "FIT scores routed ad rows"
        vectors, routes = ads
        n = vectors.shape[0]
        if user.shape[0] == 1:
            chosen = user[0].index_select(0, routes)
        else:
            chosen = user[torch.arange(n, device=user.device), routes]
        return self.lss(chosen.float(), vectors.float())

    def forward(self, features: Features) -> torch.Tensor:
        """Equals `score(encode_user, encode_ad)` but runs the user side only for each row's meta row."""
        return self.forward_train(features)[0]

    def forward_train(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ads, _, select = self._ad(features)
        if self.training:
            self.anneal_step.add_(1)
        user = self._user_heads(features, select @ self.meta, 1)
        return self.lss(user, ads), {}

    def regularizer(self) -> torch.Tensor:
        total = embedding_l2(self.user_embedding, self.ad_embedding)
        if self.behaviour is not None:
            total = total + self.behaviour_table.weight.pow(2).sum()
        return total
