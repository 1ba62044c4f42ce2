"""HIT: Hierarchical Interaction-Enhanced Two-Tower (Tencent, arXiv 2505.19849).

Each side has two generators (small MLPs over that side's static-feature embeddings, input
detached) that learn a coarse picture of the *opposite* tower's output: generator 1 on positive
rows, generator 2 on negative rows. Their outputs enter the tower detached, beside the field
embeddings; the tower DNN feeds a multi-head representer, and the score is the sum over user
heads of the max over ad heads of the dot product, plus a bias. The ad side reads ad features
only, so its (H_a, p) matrix is precomputed for the whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import AdBatch, ModelConfig, PrerankModel
from models.features import Features, FeatureSchema, FeatureSpec, Kind
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
from models.scoring import maxsim

__all__ = ["HIT", "HITConfig", "HITTower"]

GEN_LOSS_MODES = ("mimic", "repo_head", "repo_jul2024")


@dataclass(frozen=True)
class HITConfig(ModelConfig):
    """HIT settings (defaults: MODELS.md §3.2 and the recommended readings of §3.8).

    Args:
        heads: number of representer heads per side (H_u = H_a).
        head_dim: width p of each head.
        generator_hidden: hidden widths of each generator; its output width is heads * head_dim.
        normalize_mimic: L2-normalise mimic vectors before they enter the tower (H3).
        gen_loss: generation-loss variant, one of "mimic", "repo_head", "repo_jul2024" (H1).
        gen_loss_weight: alpha, the weight of the generation loss.
        linear: add each side's linear part (per-id and per-dense-value weights) to the logit.
        wide: fields read only by the linear parts, not by the towers (needs `linear`).
        vocab_dot: add, for every vocabulary both towers embed (a behaviour history of categories
            and the ad's category), the dot product of the two sides' embeddings of it (the user
            side's pooled) to the logit: an exact id-to-id match term beside the towers, folded
            into the heads as the linear part is, so serving and the index need nothing new.
        field_dot: add the dot product of the sum of the user side's field embeddings and the sum of
            the ad side's (a dense field enters as its value times a learned vector): every
            cross-tower pair of a factorization machine, <e_u, e_a> for each user field u and ad
            field a, beside the towers. Folded into the heads as `vocab_dot` is; it covers the
            match term too (a shared vocabulary's two fields are one of its pairs).
        drift: dense user or context fields (an impression's time) on which every ad-side id gets
            its own slope (`models.layers.IdDrift`): per-ad weights that move with the value, as an
            ad's quality drifts over a log's time span; folded into the heads as the linear part is.
        match: add the exact, position-weighted matches of the ad's ids in the user's behaviour
            sequences of their vocabulary (`models.layers.IdMatch`: one learned weight per position
            back from the newest); folded into the heads as the linear part is, one column per id
            of the vocabulary (at most `MATCH_WIDTH`, hashed beyond).
        pairs: add a free weight per (narrow user or context id, ad-side id) pair, segment x
            category (`models.layers.IdPairs`); folded into the heads as the linear part is.
    """

    heads: int = 2
    head_dim: int = 16
    generator_hidden: tuple[int, ...] = (32,)
    normalize_mimic: bool = True
    gen_loss: str = "mimic"
    gen_loss_weight: float = 0.1
    linear: bool = False
    wide: tuple[str, ...] = ()
    vocab_dot: bool = False
    field_dot: bool = False
    drift: tuple[str, ...] = ()
    match: bool = False
    pairs: bool = False

    def __post_init__(self) -> None:
        if self.gen_loss not in GEN_LOSS_MODES:
            raise ValueError(f"gen_loss must be one of {GEN_LOSS_MODES}, got {self.gen_loss!r}")
        check_wide(self.wide, self.linear)


class HITTower(nn.Module):
    """One side of HIT: embeddings -> generators -> DNN -> multi-head representer.

    Args:
        fields: the side's fields; those marked `static` feed the generators.
        schema: vocabulary sizes.
        config: HIT settings.
    """

    def __init__(
        self,
        fields: tuple[FeatureSpec, ...],
        schema: FeatureSchema,
        config: HITConfig,
        shared: dict[str, nn.Module] | None = None,
        dot_vocabs: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.config = config
        self.embedding = FieldEmbedding(fields, schema, config.embedding_dim, shared)
        #: per vocabulary of the match term, the positions of this side's fields of it
        self.dot_fields = [[i for i, f in enumerate(self.embedding.embedded) if f.vocab == v] for v in dot_vocabs]
        n_dense = len(self.embedding.dense)
        #: the field-dot term's vector per dense field (its value scales it), when the term is on
        self.dense_vectors = (
            nn.Parameter(torch.randn(n_dense, config.embedding_dim) * 0.01) if config.field_dot and n_dense else None
        )
        self.static_names = tuple(f.name for f in self.embedding.embedded if f.static)
        width = config.heads * config.head_dim
        static_dim = len(self.static_names) * config.embedding_dim
        self.generators = nn.ModuleList()
        if static_dim:
            for _ in range(2):  # 0: positive ("target"), 1: negative ("non-target")
                self.generators.append(MLP(static_dim, (*config.generator_hidden, width), batch_norm=False))
        in_dim = self.embedding.out_dim + len(self.generators) * width
        self.dnn = MLP(in_dim, config.hidden, config.dropout, config.batch_norm)
        self.representer = nn.Linear(self.dnn.out_dim, width)

    def forward(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the heads (B, H, p), the mimic vectors (B, 2, H*p), or None without statics, and
        the dot-term vectors (B, V*D [+ D]): per vocabulary of `dot_vocabs` the sum of this side's
        embeddings of it, then with `field_dot` the sum of all its field vectors; None without
        either."""
        embedded = self.embedding.embed(features)
        dense = self.embedding.dense_values(features)
        terms = [sum((embedded[i] for i in idx[1:]), embedded[idx[0]]) for idx in self.dot_fields]
        if self.config.field_dot:
            fm = torch.stack(embedded, 0).sum(0) if embedded else None
            if self.dense_vectors is not None:
                scaled = torch.cat(dense, -1) @ self.dense_vectors  # sum_f x_f v_f, (B, D)
                fm = scaled if fm is None else fm + scaled
            assert fm is not None  # a tower has at least one input
            terms.append(fm)
        dots = torch.cat(terms, -1) if terms else None
        mimics = None
        parts = list(embedded)
        if self.generators:  # the static fields' embeddings, reused from the tower's (same lookups)
            static = torch.cat(
                [e for f, e in zip(self.embedding.embedded, embedded, strict=True) if f.static], -1
            ).detach()
            mimics = torch.stack([g(static) for g in self.generators], dim=1)  # (B, 2, H*p)
            fed = F.normalize(mimics, dim=-1) if self.config.normalize_mimic else mimics
            parts.extend(fed.detach().unbind(1))
        x = torch.cat(parts + dense, -1)
        heads = self.representer(self.dnn(x))  # (B, H*p)
        return heads.view(-1, self.config.heads, self.config.head_dim), mimics, dots


class HIT(PrerankModel):
    """HIT with dual generators and MaxSim multi-head scoring; see the module docstring."""

    name = "hit"
    config_class = HITConfig
    ann_searchable = True

    def __init__(self, schema: FeatureSchema, config: HITConfig) -> None:
        super().__init__(schema, config)
        self.config: HITConfig = config
        # fields of one vocabulary share a table across the towers (unless the config says not to)
        shared: dict[str, nn.Module] | None = {} if config.share_tables else None
        user_fields, ad_fields = schema.user_fields, schema.ad_fields
        inputs = {
            side: without_wide(fields, schema, config.wide)
            for side, fields in (("user", user_fields), ("ad", ad_fields))
        }
        for side, kept in inputs.items():
            if not kept:
                raise ValueError(f"wide names every {side} field: the {side} tower needs at least one input")
        both = [{f.vocab for f in kept if f.kind is not Kind.DENSE and f.vocab} for kept in inputs.values()]
        self.dot_vocabs = tuple(sorted(both[0] & both[1])) if config.vocab_dot else ()
        if config.vocab_dot and not self.dot_vocabs:
            raise ValueError("vocab_dot: no vocabulary is embedded by both towers (give two fields one `vocab`)")
        towers = {side: HITTower(kept, schema, config, shared, self.dot_vocabs) for side, kept in inputs.items()}
        self.user_tower, self.ad_tower = towers["user"], towers["ad"]
        self.user_linear = FieldLinear(user_fields, schema) if config.linear else None
        self.ad_linear = FieldLinear(ad_fields, schema) if config.linear else None
        self.drift = IdDrift(ad_fields, schema, drift_fields(schema, config.drift)) if config.drift else None
        self.match = IdMatch(schema) if config.match else None
        self.pairs = IdPairs(schema) if config.pairs else None
        self.bias = nn.Parameter(torch.zeros(()))

    # Folding: sum_i max_j <U_i, A_j> gains c_user + c_ad + <u, a> exactly when every user head
    # carries [u / H_u, 1 / H_u, c_user / H_u] and every ad head [a, c_ad, 1]: each added term is the
    # same for every ad head j, so it passes through the max and sums over the H_u user heads. The
    # dot terms and the drift, match and pairs terms are such <u, a> parts.

    @property
    def dot_terms(self) -> list[IdDrift | IdMatch | IdPairs]:
        """The terms added as a dot product of a user-side and an ad-side vector: drift, match, pairs."""
        return [term for term in (self.drift, self.match, self.pairs) if term is not None]

    def _user_heads(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Folded user heads (B, H_u, p [+ V*D] [+ D] [+ 2] [+ k] [+ M] [+ P]), the mimic vectors and
        the unfolded heads."""
        heads, mimic, dots = self.user_tower(features)
        folded = [heads]
        share = 1.0 / heads.shape[1]
        if dots is not None:
            folded.append(dots.unsqueeze(1).expand(-1, heads.shape[1], -1) * share)
        if self.user_linear is not None:
            bias = self.user_linear(features).unsqueeze(1).expand(-1, heads.shape[1], 1) * share
            folded += [torch.full_like(bias, share), bias]
        for term in self.dot_terms:
            folded.append(term.user(features).unsqueeze(1).expand(-1, heads.shape[1], -1) * share)
        return (torch.cat(folded, -1) if len(folded) > 1 else heads), mimic, heads

    def _ad_heads(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Folded ad heads (N, H_a, p [+ V*D] [+ D] [+ 2] [+ k] [+ M] [+ P]), the mimic vectors and
        the unfolded heads."""
        heads, mimic, dots = self.ad_tower(features)
        folded = [heads]
        if dots is not None:
            folded.append(dots.unsqueeze(1).expand(-1, heads.shape[1], -1))
        if self.ad_linear is not None:
            bias = self.ad_linear(features).unsqueeze(1).expand(-1, heads.shape[1], 1)
            folded += [bias, torch.ones_like(bias)]
        for term in self.dot_terms:
            folded.append(term.ad(features).unsqueeze(1).expand(-1, heads.shape[1], -1))
        return (torch.cat(folded, -1) if len(folded) > 1 else heads), mimic, heads

    def encode_user(self, features: Features) -> torch.Tensor:
        """(B, H_u, p), widened by the dot terms' V*D [+ D], the linear part's 2, the drift's k,
        the match's M and the pairs' P where they are on."""
        return self._user_heads(features)[0]

    def encode_ad(self, features: Features) -> torch.Tensor:
        """(N, H_a, p), widened by the dot terms' V*D [+ D], the linear part's 2, the drift's k,
        the match's M and the pairs' P where they are on."""
        return self._ad_heads(features)[0]

    def score(self, user: torch.Tensor, ads: AdBatch) -> torch.Tensor:
        """sum_i max_j <U_i, A_j> + b, (N,)."""
        assert isinstance(ads, torch.Tensor)
        return maxsim(user, ads) + self.bias

    def forward_train(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        user, user_mimic, user_heads = self._user_heads(features)
        ad, ad_mimic, ad_heads = self._ad_heads(features)
        aux: dict[str, torch.Tensor] = {"user_repr": user_heads.flatten(1), "ad_repr": ad_heads.flatten(1)}
        if user_mimic is not None:
            aux["user_mimic"] = user_mimic
        if ad_mimic is not None:
            aux["ad_mimic"] = ad_mimic
        return self.score(user, ad), aux

    def regularizer(self) -> torch.Tensor:
        total = embedding_l2(self.user_tower.embedding, self.ad_tower.embedding)
        for linear in (self.user_linear, self.ad_linear):
            if linear is not None:
                total = total + linear.l2()
        for term in (self.drift, self.pairs):
            if term is not None:
                total = total + term.l2()
        return total
