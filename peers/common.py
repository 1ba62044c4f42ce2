"""What every peer server shares: the live version of a store loaded into a `Scorer`, warmed."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from service.scorer import Scorer
from service.store import open_store, probe_user


def live_scorer(store_url: str, threads: int = 1) -> Scorer:
    """A scorer holding the store's current version, its user tower and scoring path run once."""
    torch.set_num_threads(threads)
    store = open_store(store_url)
    current = store.current()
    if current is None:
        raise SystemExit(f"{store_url}: no version is published")
    version = store.load(current)
    scorer = Scorer("cpu")
    scorer.swap(version)
    with torch.inference_mode():
        user = version.bundle.model.encode_user(probe_user(version.bundle, version.index))
        version.bundle.model.score(user, scorer.gather(version, torch.arange(min(len(version.rows), 1024)).numpy()))
    return scorer


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--store", required=True, help="store URL holding the published version (local:DIR, redis://)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the inference worker")
    return p


def jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    """The scorer's payload with its numpy arrays as lists (what a framework's JSON encoder takes)."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in payload.items()}
