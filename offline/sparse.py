"""Sparse embedding updates: a step touches only the rows its batch looks up.

With dense `nn.Embedding` gradients under Adam every step reads and writes every row of every
table (and the L2 regulariser over whole tables does the same), so a step's cost grows with the
vocabulary. `SparseEmbeddings` turns every embedding table of a model sparse (`sparse=True`: the
gradient holds only the looked-up rows), replaces the whole-table L2 by the L2 of the rows each
batch looks up (lazy weight decay, as TorchRec/FBGEMM's row-wise optimisers apply it), and
`Optimizers` steps SparseAdam on the tables and Adam on everything else.

Under DDP the tables are left out of DDP's reducer (`ddp_ignored`) and `all_reduce` averages
their sparse gradients itself, from dense all-gathers of each rank's rows. Two gloo CPU ranks
reducing sparse gradients through DDP aborted once in CI with heap corruption ("malloc():
unaligned tcache chunk detected", not reproduced in 14 reruns); dense all-gathers are the
collectives every backend implements and tests most.
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

    def ddp_ignored(self, module: nn.Module) -> list[str]:
        """The tables' names in `module` (which holds the model), for DDP to leave to `all_reduce`."""
        tables = {id(p) for p in self.parameters()}
        return [name for name, p in module.named_parameters() if id(p) in tables]

    def all_reduce(self, world: int) -> None:
        """Averages the tables' sparse gradients over the `world` ranks, as DDP averages the rest.

        Three collectives per step whatever the number of tables: the counts of rows each rank
        looked up, then every rank's row ids and their gradients, each padded to the largest
        rank's count and packed into one flat tensor.
        """
        import torch.distributed as dist

        weights = self.parameters()
        device = weights[0].device
        grads = [w.grad.coalesce() if w.grad is not None else None for w in weights]
        counts = torch.tensor([g._nnz() if g is not None else 0 for g in grads], device=device)
        every = [torch.empty_like(counts) for _ in range(world)]
        dist.all_gather(every, counts)
        rows = torch.stack(every)  # world x tables
        most = rows.max(dim=0).values.tolist()
        dims = [w.shape[1] for w in weights]
        index = torch.zeros(sum(most), dtype=torch.int64, device=device)
        value = torch.zeros(sum(m * d for m, d in zip(most, dims, strict=True)), dtype=weights[0].dtype, device=device)
        at = vat = 0
        for g, m, d in zip(grads, most, dims, strict=True):
            if g is not None:
                n = g._nnz()
                index[at : at + n] = g.indices()[0]
                value[vat : vat + n * d] = g.values().reshape(-1)
            at, vat = at + m, vat + m * d
        indices = [torch.empty_like(index) for _ in range(world)]
        values = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(indices, index)
        dist.all_gather(values, value)
        at = vat = 0
        for t, (w, m, d) in enumerate(zip(weights, most, dims, strict=True)):
            if m:
                per_rank: list[int] = rows[:, t].tolist()
                ids = torch.cat([indices[r][at : at + per_rank[r]] for r in range(world)])
                grad = torch.cat([values[r][vat : vat + per_rank[r] * d].view(-1, d) for r in range(world)]) / world
                w.grad = torch.sparse_coo_tensor(ids[None], grad, w.shape).coalesce()
            at, vat = at + m, vat + m * d


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
