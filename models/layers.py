"""Building blocks shared by the towers: field embeddings and the MLP block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.features import Features, FeatureSchema, FeatureSpec, Jagged, Kind

__all__ = [
    "MLP",
    "RARE_IDS",
    "FieldEmbedding",
    "FieldLinear",
    "IdDrift",
    "IdMatch",
    "IdPairs",
    "LightSE",
    "check_wide",
    "drift_fields",
    "match_pairs",
    "pair_fields",
    "embedding_l2",
    "fold_for_inference",
    "jagged_to_padded",
    "positions_back",
    "row_of_each_id",
    "without_wide",
]

EMBEDDING_INIT_STD = 1e-4


def _rows(table: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """table(ids); without autograd (serving), an Embedding's rows are read without the module call."""
    if isinstance(table, nn.Embedding) and not torch.is_grad_enabled():
        return table.weight.index_select(0, ids)
    return table(ids)


def positions_back(value: Jagged, newest_first: bool) -> torch.Tensor:
    """Each id's position counted back from its row's newest id (0: the newest), (T,)."""
    total = value.values.shape[0]
    offsets = value.offsets
    if offsets.shape[0] == 1:  # one row (a served request): no segment arithmetic
        index = torch.arange(total, device=offsets.device)
        return index if newest_first else total - 1 - index
    ends = torch.cat([offsets[1:], offsets.new_tensor([total])])
    lengths = ends - offsets
    index = torch.arange(total, device=offsets.device) - torch.repeat_interleave(offsets, lengths)
    return index if newest_first else torch.repeat_interleave(lengths, lengths) - 1 - index


def row_of_each_id(value: Jagged) -> torch.Tensor:
    """The row each id of a jagged batch belongs to, (T,)."""
    total = value.values.shape[0]
    offsets = value.offsets
    ends = torch.cat([offsets[1:], offsets.new_tensor([total])])
    return torch.repeat_interleave(torch.arange(offsets.shape[0], device=offsets.device), ends - offsets)


class FieldEmbedding(nn.Module):
    """Embeds one side's fields and flattens them into a tower input.

    Fields that name the same vocabulary share one table: pass the same `shared` dict to the user
    and the ad side's FieldEmbedding and a behaviour sequence of categories and the ad's category
    live in one embedding space. A table used by one sequence field alone is an
    `nn.EmbeddingBag` (pooled in one kernel); other tables are `nn.Embedding`s, and their sequence
    fields are pooled by a segment sum. A field whose `dim` is narrower than the model's width D is
    projected up by a bias-free linear map. A sequence with recency pooling has one learned weight
    per position back from its newest id (initialised to 1 / max_len: a mean over a full history).
    Dense scalars, standardised when their spec says so, are appended after the embeddings.

    Args:
        fields: the side's fields, in schema order.
        schema: gives the vocabulary size of each table and which fields share one.
        dim: embedding width D.
        shared: vocabulary name -> table, filled and reused across the FieldEmbeddings given it.

    Example::

        shared: dict[str, nn.Module] = {}
        user = FieldEmbedding(schema.user_fields, schema, dim=32, shared=shared)
        ad = FieldEmbedding(schema.ad_fields, schema, dim=32, shared=shared)
        x = user(features)  # (B, n_embedded * D + n_dense)
    """

    def __init__(
        self,
        fields: Sequence[FeatureSpec],
        schema: FeatureSchema,
        dim: int,
        shared: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embedded = tuple(f for f in fields if f.kind is not Kind.DENSE)
        self.dense = tuple(f for f in fields if f.kind is Kind.DENSE)
        self.tables = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.recency = nn.ParameterDict()
        shared = {} if shared is None else shared
        users_of = {v: [g for g in schema.features if g.vocab == v] for v in {f.vocab for f in self.embedded}}
        for f in self.embedded:
            vocab, width = f.vocab or "", f.dim or dim
            table = shared.get(f"{vocab}/{width}")
            if table is None:
                rows = schema.vocab_sizes[vocab] + 1
                alone = len(users_of[f.vocab]) == 1 and f.kind is Kind.SEQUENCE
                mode = "sum" if f.pooling == "recency" else f.pooling
                table = nn.EmbeddingBag(rows, width, mode=mode) if alone else nn.Embedding(rows, width)
                nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
                shared[f"{vocab}/{width}"] = table
            self.tables[f.name] = table
            if width != dim:
                self.projections[f.name] = nn.Linear(width, dim, bias=False)
            if f.kind is Kind.SEQUENCE and f.pooling == "recency":
                assert f.max_len is not None  # FeatureSpec checks it
                self.recency[f.name] = nn.Parameter(torch.full((f.max_len,), 1.0 / f.max_len))
        self._norms = {
            f.name: (float(f.normalize[0]), float(f.normalize[1])) for f in self.dense if f.normalize is not None
        }

    @property
    def out_dim(self) -> int:
        return len(self.embedded) * self.dim + len(self.dense)

    def _lookup(self, f: FeatureSpec, value: torch.Tensor | Jagged) -> torch.Tensor:
        table = self.tables[f.name]
        if not isinstance(value, Jagged):
            return _rows(table, value)
        weights = self._recency_weights(f, value) if f.name in self.recency else None
        if isinstance(table, nn.EmbeddingBag):
            return table(value.values, value.offsets, per_sample_weights=weights)
        rows = value.offsets.shape[0]
        if rows == 1:  # one row (a served request): a plain pool, no segment arithmetic
            vectors = _rows(table, value.values)
            if weights is not None:
                vectors = vectors * weights.unsqueeze(1)
            pooled = vectors.sum(0, keepdim=True)
            return pooled / max(value.values.shape[0], 1) if f.pooling == "mean" else pooled
        ends = torch.cat([value.offsets[1:], value.offsets.new_tensor([value.values.shape[0]])])
        lengths = ends - value.offsets
        segment = torch.repeat_interleave(torch.arange(rows, device=lengths.device), lengths)
        vectors = table(value.values)
        if weights is not None:
            vectors = vectors * weights.unsqueeze(1)
        pooled = vectors.new_zeros(rows, vectors.shape[-1]).index_add_(0, segment, vectors)
        if f.pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled

    def _recency_weights(self, f: FeatureSpec, value: Jagged) -> torch.Tensor:
        """Each id's learned weight by its position back from its row's newest id, (T,)."""
        weights = self.recency[f.name]
        return weights[positions_back(value, f.newest_first).clamp(max=weights.shape[0] - 1)]

    def embed(self, features: Features, names: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Embeddings of the named (default: all) embedded fields, each (B, D)."""
        out = []
        for f in self.embedded:
            if names is not None and f.name not in names:
                continue
            vector = self._lookup(f, features[f.name])
            if f.name in self.projections:
                vector = self.projections[f.name](vector)
            out.append(vector)
        return out

    def dense_values(self, features: Features) -> list[torch.Tensor]:
        """Dense scalars (standardised where the spec says so), each (B, 1)."""
        out = []
        for f in self.dense:
            x = torch.as_tensor(features[f.name]).float()
            if f.name in self._norms:
                mean, std = self._norms[f.name]
                x = (x - mean) / std
            out.append(x.unsqueeze(-1))
        return out

    def forward(self, features: Features) -> torch.Tensor:
        """Returns the flat tower input (B, n_embedded * D + n_dense)."""
        return torch.cat(self.embed(features) + self.dense_values(features), dim=-1)

    def l2(self) -> torch.Tensor:
        """Sum of squares of every table entry (the reference code's embedding regulariser)."""
        return embedding_l2(self)


#: `wide` placeholder that training resolves to the dataset's rare id fields (offline.train).
RARE_IDS = "rare-ids"


def check_wide(wide: object, linear: bool) -> None:
    """A model config's `wide`: field names or RARE_IDS, and only with a linear part."""
    if isinstance(wide, str) and wide != RARE_IDS:
        raise ValueError(f'wide must be a list of field names or "{RARE_IDS}", got {wide!r}')
    if wide and not linear:
        raise ValueError("wide fields feed the linear part: set linear true")


def without_wide(fields: Sequence[FeatureSpec], schema: FeatureSchema, wide: Sequence[str]) -> tuple[FeatureSpec, ...]:
    """`fields` less the `wide` ones (read by a model's linear part only); ValueError naming any
    wide name the schema lacks."""
    if isinstance(wide, str):
        raise ValueError(f"wide {wide!r} is resolved against a dataset by training; a model takes field names")
    unknown = sorted(set(wide) - {f.name for f in schema.features})
    if unknown:
        raise ValueError(f"wide names fields the schema lacks: {unknown}")
    return tuple(f for f in fields if f.name not in wide)


def embedding_l2(*embeddings: FieldEmbedding) -> torch.Tensor:
    """Sum of squares of every entry of the embeddings' tables, each shared table counted once."""
    total = torch.zeros(())
    seen: set[int] = set()
    for embedding in embeddings:
        for table in embedding.tables.values():
            if id(table) in seen:
                continue
            seen.add(id(table))
            weight: torch.Tensor = table.weight  # type: ignore[assignment]
            total = total + weight.pow(2).sum()
    return total


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> ReLU -> Dropout for every hidden layer, the last one included.

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers.
        dropout: dropout probability after each activation.
        batch_norm: insert BatchNorm1d after each Linear.
        init_std: std of the normal init of Linear weights (None keeps PyTorch's default).

    Example::

        mlp = MLP(225, (300, 300, 32), dropout=0.3)
        h = mlp(x)  # (B, 32)
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = True,
        init_std: float | None = EMBEDDING_INIT_STD,
    ) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            linear = nn.Linear(in_dim, width)
            if init_std is not None:
                nn.init.normal_(linear.weight, std=init_std)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        super().__init__(*layers)
        self.out_dim = in_dim
        #: (W^T contiguous, b) per layer once fold_for_inference has run: the forward pass is then
        #: one addmm and an in-place ReLU per layer, without a module call per op.
        self.plan: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is None or torch.is_grad_enabled():
            return super().forward(x)
        for weight_t, bias in self.plan:
            x = torch.addmm(bias, x, weight_t).relu_()
        return x


def fold_for_inference(model: nn.Module) -> nn.Module:
    """Folds each MLP's BatchNorm1d into the Linear before it, drops its Dropouts and gives it an
    inference plan (`MLP.plan`: transposed weights, one addmm + in-place ReLU per layer), in place.

    In eval mode this is the same function in fewer ops (BatchNorm with frozen statistics is an
    affine map), which is what a batch-1 user tower spends its time on: a 192-300-300-32 MLP at
    batch 1 took 115 us as modules and 49 us as the plan (2-core AMD EPYC VM, one thread). For
    serving only: the folded model cannot be trained, and the plan is derived from the weights as
    they are, so fold after moving the model to its device. Returns `model`.
    """
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    if model.training:
        raise ValueError("fold_for_inference needs a model in eval mode")
    for mlp in [m for m in model.modules() if isinstance(m, MLP)]:
        layers: list[nn.Module] = []
        for layer in mlp:
            if isinstance(layer, nn.BatchNorm1d) and layers and isinstance(layers[-1], nn.Linear):
                layers[-1] = fuse_linear_bn_eval(layers[-1], layer)
            elif not isinstance(layer, nn.Dropout):
                layers.append(layer)
        for name in list(mlp._modules):
            del mlp._modules[name]
        for i, layer in enumerate(layers):
            mlp.add_module(str(i), layer)
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        pairs = zip(layers[0::2], layers[1::2], strict=False)
        if len(layers) == 2 * len(linears) and all(isinstance(r, nn.ReLU) for _, r in pairs):
            mlp.plan = [(layer.weight.detach().t().contiguous(), _bias(layer)) for layer in linears]
    return model


def _bias(linear: nn.Linear) -> torch.Tensor:
    bias = linear.bias
    weight = linear.weight
    return torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device) if bias is None else bias.detach()


class FieldLinear(nn.Module):
    """The linear (LR) part of a CTR model over one side's fields: one weight per id and per dense field.

    Returns the side's partial logit (B, 1); the user and ad parts add up to the LR logit.
    """

    def __init__(self, fields: Sequence[FeatureSpec], schema: FeatureSchema) -> None:
        super().__init__()
        self.weights = FieldEmbedding(fields, schema, 1)
        n_dense = len(self.weights.dense)
        self.dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None

    def forward(self, features: Features) -> torch.Tensor:
        embedded = self.weights.embed(features)
        total = torch.stack(embedded, 0).sum(0) if embedded else None
        if self.dense is not None:
            dense = self.dense(torch.cat(self.weights.dense_values(features), -1))
            total = dense if total is None else total + dense
        if total is None:
            raise ValueError("FieldLinear needs at least one field")
        return total

    def l2(self) -> torch.Tensor:
        return self.weights.l2()


def drift_fields(schema: FeatureSchema, names: Sequence[str]) -> tuple[FeatureSpec, ...]:
    """The request-side dense fields a model's `drift` names; ValueError naming any that is not one."""
    if isinstance(names, str):
        raise ValueError(f"drift must be a list of field names, got {names!r}")
    request = {f.name: f for f in schema.user_fields if f.kind is Kind.DENSE}
    wrong = [name for name in names if name not in request]
    if wrong:
        raise ValueError(
            f"drift names fields that are not dense user or context fields of the schema: {wrong}"
            f" (dense request-side fields: {sorted(request)})"
        )
    return tuple(request[name] for name in names)


class IdDrift(nn.Module):
    """Per-id slopes of the ad side's ids on request-side dense values: an ad's weight (and its
    category's, its advertiser's) that moves with the impression's time, or with any dense user or
    context value.

    logit += sum_f x_f * sum_a s_{a,f}[id_a], over the named request-side dense fields f
    (standardised as their specs say) and the ad side's id fields a. Each side's half is a vector:
    the user side's the k values (`user`), the ad side's its k summed slopes (`ad`), so the term is
    a dot product that a two-tower model folds into its heads and an index stores with the rest of
    an ad's row. The slopes are embedding tables (initialised near 0) under the model's embedding
    regulariser: an ad with few rows keeps a slope near 0.

    Example::

        drift = IdDrift(schema.ad_fields, schema, drift_fields(schema, ["ts"]))
        term = (drift.user(features) * drift.ad(features)).sum(-1)  # (B,)
    """

    def __init__(self, ad_fields: Sequence[FeatureSpec], schema: FeatureSchema, request: Sequence[FeatureSpec]) -> None:
        super().__init__()
        ids = [f for f in ad_fields if f.kind is not Kind.DENSE]
        if not ids or not request:
            raise ValueError("drift needs at least one ad-side id field and one request-side dense field")
        self.values = FieldEmbedding(request, schema, 1)
        self.slopes = FieldEmbedding(ids, schema, len(request))

    @property
    def width(self) -> int:
        return len(self.values.dense)

    def user(self, features: Features) -> torch.Tensor:
        """The request-side values, (B, k)."""
        return torch.cat(self.values.dense_values(features), -1)

    def ad(self, features: Features) -> torch.Tensor:
        """The ad's slopes summed over its id fields, (N, k)."""
        return torch.stack(self.slopes.embed(features), 0).sum(0)

    def l2(self) -> torch.Tensor:
        return self.slopes.l2()


#: Widest one-hot an `IdMatch` vocabulary gets: a larger vocabulary is hashed (id modulo this) into
#: that many buckets, and ids that share a bucket count as a match.
MATCH_WIDTH = 256


def match_pairs(schema: FeatureSchema) -> list[tuple[FeatureSpec, tuple[FeatureSpec, ...]]]:
    """Each user-side sequence field with the ad-side id fields of its vocabulary (those an
    `IdMatch` compares), in schema order; ValueError when there are none."""
    ad_ids = [f for f in schema.ad_fields if f.kind is Kind.SPARSE and f.vocab]
    pairs = [
        (s, tuple(a for a in ad_ids if a.vocab == s.vocab))
        for s in schema.user_fields
        if s.kind is Kind.SEQUENCE and s.vocab
    ]
    pairs = [(s, ads) for s, ads in pairs if ads]
    if not pairs:
        raise ValueError(
            "match: no ad-side id field shares a vocabulary with a user-side sequence"
            " (give the history and the ad's field one `vocab`)"
        )
    return pairs


class IdMatch(nn.Module):
    """Exact matches of the ad's ids in the user's behaviour sequences of their vocabulary, each
    weighted by its position back from the newest: the "has this user clicked this category
    lately" feature of CTR practice, which an embedding dot product only approximates when the
    vocabulary is wider than the embeddings.

    logit += sum_s sum_p w_{s,p} * [h_{s,p} == a] over every sequence s, its positions p (one weight
    per position up to the field's `max_len`, one weight in all without it) and the ad's id fields a
    of its vocabulary. Each side's half is a vector: the user side's the position-weighted
    multi-hot of each sequence, the ad side's the one-hot of its ids, so the term is a dot product
    that a two-tower model folds into its heads and an index stores with the rest of an ad's row.
    A vocabulary wider than `MATCH_WIDTH` ids is hashed into that many buckets. Id 0 (padding, rare
    and unseen values) never matches. The weights start at 0: the term is off until training
    finds it.

    Example::

        match = IdMatch(schema)
        term = (match.user(features) * match.ad(features)).sum(-1)  # (B,)
    """

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.pairs = match_pairs(schema)
        self.widths = [min(schema.vocab_sizes[s.vocab or ""], MATCH_WIDTH) for s, _ in self.pairs]
        self.weights = nn.ParameterDict({s.name: nn.Parameter(torch.zeros(s.max_len or 1)) for s, _ in self.pairs})

    @property
    def width(self) -> int:
        return sum(self.widths)

    def user(self, features: Features) -> torch.Tensor:
        """The position-weighted multi-hot of each sequence, (B, width)."""
        parts = []
        for (s, _), width in zip(self.pairs, self.widths, strict=True):
            value = features[s.name]
            assert isinstance(value, Jagged)
            rows = value.offsets.shape[0]
            weights = self.weights[s.name]
            w = weights[positions_back(value, s.newest_first).clamp(max=weights.shape[0] - 1)]
            ids = value.values
            w = w * (ids > 0).to(w.dtype)
            flat = row_of_each_id(value) * width + (ids - 1).clamp(min=0) % width
            parts.append(w.new_zeros(rows * width).index_add_(0, flat, w).view(rows, width))
        return torch.cat(parts, -1)

    def ad(self, features: Features) -> torch.Tensor:
        """The one-hot of the ad's ids of each sequence's vocabulary (summed over its fields), (N, width)."""
        parts = []
        for (_, ads), width in zip(self.pairs, self.widths, strict=True):
            hot = None
            for a in ads:
                ids = torch.as_tensor(features[a.name])
                one = torch.nn.functional.one_hot((ids - 1).clamp(min=0) % width, width).float()
                one = one * (ids > 0).unsqueeze(-1).float()
                hot = one if hot is None else hot + one
            assert hot is not None  # match_pairs keeps sequences with at least one ad field
            parts.append(hot)
        return torch.cat(parts, -1)


#: Widest request-side field (ids, padding included) an `IdPairs` crosses: wider ones (a user id)
#: are left to the embeddings, whose dot products are the low-rank form of such a table.
PAIR_WIDTH = 64


def pair_fields(schema: FeatureSchema) -> tuple[FeatureSpec, ...]:
    """The request-side (user and context) single-id fields narrow enough for `IdPairs`; ValueError
    when there are none or the ad side has no id field."""
    small = tuple(
        f for f in schema.user_fields if f.kind is Kind.SPARSE and schema.vocab_sizes[f.vocab or ""] + 1 <= PAIR_WIDTH
    )
    if not small or not any(f.kind is not Kind.DENSE for f in schema.ad_fields):
        raise ValueError(
            f"pairs: needs an ad-side id field and a user or context id field of at most {PAIR_WIDTH} ids"
            " (a segment, an age band, a position)"
        )
    return small


class IdPairs(nn.Module):
    """A free weight for every (request-side id, ad-side id) pair of a narrow request field and
    an ad field: segment x category, age band x advertiser, position x ad. The cross-product
    columns of Wide & Deep, in a form an index can precompute.

    logit += sum_r sum_a T_{r,a}[id_a][id_r] over the narrow request-side fields r (`pair_fields`:
    at most `PAIR_WIDTH` ids each) and the ad side's id fields a. Each side's half is a vector: the
    request side's the one-hot of each narrow field, the ad side's each table's row for its ids
    (summed over its id fields), so the term is a dot product that a two-tower model folds into its
    heads and an index stores with the rest of an ad's row. The tables are embedding tables
    (initialised near 0) under the model's embedding regulariser: a pair seen in few rows keeps a
    weight near 0, and the embeddings' own dot products carry what it cannot.

    Example::

        pairs = IdPairs(schema)
        term = (pairs.user(features) * pairs.ad(features)).sum(-1)  # (B,)
    """

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.request = pair_fields(schema)
        self.widths = [schema.vocab_sizes[f.vocab or ""] + 1 for f in self.request]
        ids = [f for f in schema.ad_fields if f.kind is not Kind.DENSE]
        self.tables = FieldEmbedding(ids, schema, sum(self.widths))

    @property
    def width(self) -> int:
        return sum(self.widths)

    def user(self, features: Features) -> torch.Tensor:
        """The one-hot of each narrow request-side field, (B, width)."""
        hots = [
            torch.nn.functional.one_hot(torch.as_tensor(features[f.name]), width)
            for f, width in zip(self.request, self.widths, strict=True)
        ]
        return torch.cat(hots, -1).float()

    def ad(self, features: Features) -> torch.Tensor:
        """The ad's rows of the pair tables summed over its id fields, (N, width)."""
        return torch.stack(self.tables.embed(features), 0).sum(0)

    def l2(self) -> torch.Tensor:
        return self.tables.l2()


class LightSE(nn.Module):
    """IntTower's Light-SE over m field embeddings, as coded: e + softmax(W mean_D(e)) * e.

    One bias-free (m x m) layer; softmax across fields; residual re-weighting (weight 1 + k_i).
    """

    def __init__(self, fields: int) -> None:
        super().__init__()
        self.excite = nn.Linear(fields, fields, bias=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, m, D) -> (B, m, D)."""
        weights = torch.softmax(self.excite(embeddings.mean(-1)), dim=-1)
        return embeddings + embeddings * weights.unsqueeze(-1)


def jagged_to_padded(seq: Jagged, rows: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `max_len` ids of each row as a padded (rows, L) id matrix and its validity mask.

    L is the longest kept row (at least 1); padding is id 0.
    """
    values, offsets = seq.values, seq.offsets
    total = values.shape[0]
    ends = torch.cat([offsets[1:], offsets.new_tensor([total])])
    lengths = (ends - offsets).clamp(max=max_len)
    width = max(int(lengths.max()) if rows else 0, 1)
    positions = torch.arange(width, device=values.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (rows, L)
    source = (offsets.unsqueeze(1) + positions.unsqueeze(0)).clamp(max=max(total - 1, 0))
    ids = values[source] if total else torch.zeros_like(source)
    return ids.masked_fill(~mask, 0), mask
