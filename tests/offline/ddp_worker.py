"""Run under torchrun by test_distributed.py: one DDP backward of the training loss on this rank's
shard of a fixed batch; rank 0 writes the averaged gradients (what every rank's optimizer sees).
With "sparse", the embedding tables are sparse and averaged by `SparseEmbeddings.all_reduce` (no L2)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from models.registry import build_model
from offline.data.synthetic import make_synthetic
from offline.sparse import SparseEmbeddings
from offline.train import _distributed, _TrainStep, shard

L2 = 1e-3
ROWS = 512


def tiny():  # type: ignore[no-untyped-def]
    return make_synthetic(n_users=300, n_ads=120, n_rows=6000, seed=3)


def main(model_name: str, config: str, out: str, mode: str = "dense") -> None:
    torch.set_num_threads(1)
    ddp = _distributed("cpu")
    data = tiny()
    torch.manual_seed(0)
    model = build_model(model_name, data.schema, json.loads(config)).train()
    sparse = SparseEmbeddings(model) if mode == "sparse" else None
    train_step = _TrainStep(model, 0.0 if sparse else L2, ddp.world)
    if sparse is not None:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(train_step, sparse.ddp_ignored(train_step))
    step = DistributedDataParallel(train_step, find_unused_parameters=True)
    feats, labels = data.train.batch(shard(np.arange(ROWS), ddp.rank, ddp.world))
    step(feats, labels).backward()
    if sparse is not None:
        assert all(w.grad is None or w.grad.is_sparse for w in sparse.parameters())
        sparse.all_reduce(ddp.world)
    if ddp.rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        save_file({n: (g.to_dense() if g.is_sparse else g).contiguous() for n, g in grads.items()}, out)
    del step  # the DDP reducer's gloo work must end before its process group does
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo's threads can abort the process while static objects are
    # destroyed ("terminate called without an active exception"), after all the work is done.
    os._exit(0)
