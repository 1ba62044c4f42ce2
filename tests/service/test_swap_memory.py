"""A hot swap holds at most two versions' bytes (the bound the 10M-ad runs are held to, at test size)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from offline.data import Dataset
from offline.export import export
from offline.train import TrainResult

#: In a fresh interpreter, as a server does it: load the live version, load the next beside it,
#: swap (drop the old one, trim the heap). RSS above the process once it has loaded and dropped a
#: tiny version: what its first load initialises once (lazy imports, kernels) is not a version's.
_SWAP = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from service.memory import release_freed_memory
from service.store import load_version
from tools.procs import memory_bytes
load_version(Path(sys.argv[3]))
release_freed_memory()
empty = memory_bytes("VmRSS")
live = load_version(Path(sys.argv[1]))
one = memory_bytes("VmRSS")
live = load_version(Path(sys.argv[2]))  # loaded beside the live one, which is dropped only then
release_freed_memory()
print(json.dumps({"empty": empty, "one": one, "peak": memory_bytes("VmHWM"), "after": memory_bytes("VmRSS")}))
"""


def test_swap_peak_stays_within_2_2x_of_a_versions_bytes(
    tiny: Dataset, tiny_hit: TrainResult, store: Path, tmp_path: Path
) -> None:
    n = 300_000  # ads with random 64-bit ids: the sparse id index, the ANN indexes, the row matrix
    rng = np.random.default_rng(5)
    pick = rng.integers(0, len(tiny.ad_ids), n)
    ids = rng.permutation(np.unique(rng.integers(2**40, 2**62, n + 100))[:n])
    big = dataclasses.replace(tiny, ad_ids=ids, ads=tiny.ads.take_rows(pick), ad_bids=tiny.ad_bids[pick])
    assert tiny_hit.artifact is not None
    root = tmp_path / "store"
    for _ in range(2):
        export(tiny_hit.artifact, big, f"local:{root}")
    first, second = sorted((root / "versions").iterdir())
    version_bytes = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    assert version_bytes > 60 * 2**20  # big enough that the process's own noise does not decide
    warm = next((store / "versions").iterdir())
    args = [sys.executable, "-c", _SWAP, str(first), str(second), str(warm)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    assert rss["peak"] - rss["empty"] <= 2.2 * version_bytes, (rss, version_bytes)
    assert rss["after"] - rss["empty"] <= 1.4 * (rss["one"] - rss["empty"])  # the old version went back
