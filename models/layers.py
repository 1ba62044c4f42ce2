"""Building blocks shared by the towers: field embeddings and the MLP block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.features import Features, FeatureSchema, FeatureSpec, Jagged, Kind

__all__ = ["MLP", "FieldEmbedding", "FieldLinear", "LightSE", "jagged_to_padded"]

EMBEDDING_INIT_STD = 1e-4


class FieldEmbedding(nn.Module):
    """Embeds one side's fields and flattens them into a tower input.

    Sparse fields use `nn.Embedding`, sequence fields a mean-pooling `nn.EmbeddingBag`; dense
    scalars are appended after the embeddings. Tables are owned by the caller-supplied
    `tables` dict so that generators can share them through `static_vector`.

    Args:
        fields: the side's fields, in schema order.
        schema: gives the vocabulary size of each table.
        dim: embedding width D.

    Example::

        emb = FieldEmbedding(schema.user_fields, schema, dim=32)
        x = emb(features)  # (B, n_embedded * D + n_dense)
    """

    def __init__(self, fields: Sequence[FeatureSpec], schema: FeatureSchema, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embedded = tuple(f for f in fields if f.kind is not Kind.DENSE)
        self.dense = tuple(f for f in fields if f.kind is Kind.DENSE)
        self.tables = nn.ModuleDict()
        for f in self.embedded:
            rows = schema.vocab_sizes[f.vocab or ""] + 1
            table: nn.Embedding | nn.EmbeddingBag = (
                nn.EmbeddingBag(rows, dim, mode="mean") if f.kind is Kind.SEQUENCE else nn.Embedding(rows, dim)
            )
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
            self.tables[f.name] = table

    @property
    def out_dim(self) -> int:
        return len(self.embedded) * self.dim + len(self.dense)

    def embed(self, features: Features, names: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Embeddings of the named (default: all) embedded fields, each (B, D)."""
        out = []
        for f in self.embedded:
            if names is not None and f.name not in names:
                continue
            value = features[f.name]
            if isinstance(value, Jagged):
                out.append(self.tables[f.name](value.values, value.offsets))
            else:
                out.append(self.tables[f.name](value))
        return out

    def dense_values(self, features: Features) -> list[torch.Tensor]:
        """Dense scalars, each (B, 1)."""
        return [torch.as_tensor(features[f.name]).float().unsqueeze(-1) for f in self.dense]

    def forward(self, features: Features) -> torch.Tensor:
        """Returns the flat tower input (B, n_embedded * D + n_dense)."""
        return torch.cat(self.embed(features) + self.dense_values(features), dim=-1)

    def l2(self) -> torch.Tensor:
        """Sum of squares of every table entry (the reference code's embedding regulariser)."""
        total = torch.zeros(())
        for table in self.tables.values():
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
