"""Sparse embedding updates: a step touches only the rows its batch looks up.

With dense `nn.Embedding` gradients under Adam every step reads and writes every row of every
table (and the L2 regulariser over whole tables does the same), so a step's cost grows with the
vocabulary. `SparseEmbeddings` turns every embedding table of a model sparse (`sparse=True`: the
gradient holds only the looked-up rows), replaces the whole-table L2 by the L2 of the rows each
batch looks up (lazy weight decay, as TorchRec/FBGEMM's row-wise optimisers apply it), and
`Optimizers` steps SparseAdam on the tables and Adam on everything else. DDP reduces sparse
gradients (gloo and nccl).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Optimizers", "SparseEmbeddings"]


class SparseEmbeddings:
    """Makes `model`'s embedding tables sparse and collects the per-batch L2 of the rows looked up."""

    def __init__(self, model: nn.Module) -> None:
        self.tables: list[nn.Embedding | nn.EmbeddingBag] = [
            m for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
        ]
        self._terms: list[torch.Tensor] = []
        for table in self.tables:
            table.sparse = True
            table.register_forward_hook(self._collect)

    def _collect(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        rows = torch.unique(inputs[0])
        self._terms.append(F.embedding(rows, weight, sparse=True).pow(2).sum())

    def l2(self) -> torch.Tensor:
        """Sum of squares of the rows looked up since the last call (each row once per batch)."""
        total = torch.stack(self._terms).sum() if self._terms else torch.zeros(())
        self._terms = []
        return total

    def parameters(self) -> list[torch.Tensor]:
        return [t.weight for t in self.tables]


class Optimizers:
    """SparseAdam over the sparse tables and Adam over the rest, stepped as one optimizer."""

    def __init__(self, model: nn.Module, sparse: SparseEmbeddings, lr: float) -> None:
        table_ids = {id(p) for p in sparse.parameters()}
        dense = [p for p in model.parameters() if id(p) not in table_ids]
        self.parts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse.parameters(), lr=lr)]
        if dense:
            self.parts.append(torch.optim.Adam(dense, lr=lr))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()
