"""Run under torchrun by test_distributed.py: one DDP backward of the training loss on this rank's
shard of a fixed batch; rank 0 writes the averaged gradients (what every rank's optimizer sees)."""

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
from offline.train import _distributed, _TrainStep, shard

L2 = 1e-3
ROWS = 512


def tiny():  # type: ignore[no-untyped-def]
    return make_synthetic(n_users=300, n_ads=120, n_rows=6000, seed=3)


def main(model_name: str, config: str, out: str) -> None:
    torch.set_num_threads(1)
    ddp = _distributed("cpu")
    data = tiny()
    torch.manual_seed(0)
    model = build_model(model_name, data.schema, json.loads(config)).train()
    step = DistributedDataParallel(_TrainStep(model, L2, ddp.world), find_unused_parameters=True)
    feats, labels = data.train.batch(shard(np.arange(ROWS), ddp.rank, ddp.world))
    step(feats, labels).backward()
    if ddp.rank == 0:
        save_file({n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}, out)
    del step  # the DDP reducer's gloo work must end before its process group does
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gloo's threads can abort the process while static objects are
    # destroyed ("terminate called without an active exception"), after all the work is done.
    os._exit(0)
