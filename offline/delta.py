"""Ad deltas: encode only the new or changed ads with the live model and publish them on top of
the live version (storage.deltas), and pause or resume ads.

What changed is found by comparing, per ad id, the dataset's feature digest and bid with the
live state (the version's index plus its delta chain): a new id or a new digest is an upsert (the
ad tower runs on those rows only), an equal digest with another bid a bid change, and a live id
missing from the dataset a removal.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load as load_tensors

from models.artifact import ArtifactError, load_artifact
from models.base import join_ads
from models.rows import AdRows
from offline.data import Dataset
from offline.export import _check_schema, encode_ads
from storage import RedisKeys, fetch_redis_file, parse_store_url
from storage.deltas import AdDelta, DeltaRefused, publish_delta, read_deltas, set_paused

__all__ = ["LiveAds", "check_live_model", "export_delta", "live_ads", "pause_ads", "store_client"]

log = logging.getLogger(__name__)


def store_client(store_url: str) -> Any:
    import redis

    if parse_store_url(store_url).scheme != "redis":
        raise ValueError(f"deltas and pauses need a redis:// store (its events reach every replica), got {store_url!r}")
    return redis.Redis.from_url(store_url, socket_timeout=30)


class LiveAds:
    """The ads of the live version with its delta chain applied: id -> (feature digest, bid)."""

    def __init__(
        self, version: str, model_version: str, dtype: str, ids: np.ndarray, hashes: np.ndarray, bids: np.ndarray
    ) -> None:
        self.version, self.model_version, self.dtype = version, model_version, dtype
        self.state = {int(i): (int(h), float(b)) for i, h, b in zip(ids, hashes, bids, strict=True)}
        self.deltas = 0

    def apply(self, delta: AdDelta) -> None:
        for i in delta.remove_ids:
            self.state.pop(int(i), None)
        for i, b in zip(delta.bid_ids, delta.bid_values, strict=True):
            if int(i) in self.state:
                self.state[int(i)] = (self.state[int(i)][0], float(b))
        for i, h, b in zip(delta.upsert_ids, delta.upsert_hashes, delta.upsert_bids, strict=True):
            self.state[int(i)] = (int(h), float(b))
        self.deltas += 1


def live_ads(client: Any, keys: RedisKeys) -> LiveAds:
    """Reads the live version's ids, digests and bids (one file) and replays its delta chain.

    Raises:
        ArtifactError: nothing is published, or the live index predates feature digests.
    """
    raw = client.get(keys.current)
    if raw is None:
        raise ArtifactError("nothing is published in the store: run a full export first")
    version = raw.decode()
    manifest, data = fetch_redis_file(client.mget, keys, version, "index.safetensors")
    tensors = load_tensors(data)
    if "ad_hashes" not in tensors:
        raise ArtifactError(
            f"version {version} has no ad feature digests (exported by an older release): run a full export"
        )
    live = LiveAds(
        version,
        str(manifest.get("model_version")),
        str(manifest.get("dtype")),
        tensors["ad_ids"].numpy(),
        tensors["ad_hashes"].numpy().view(np.uint64),
        tensors["bids"].numpy(),
    )
    for _, delta in read_deltas(client, keys, version):
        live.apply(delta)
    return live


def check_live_model(store_url: str, model_version: str) -> str:
    """The live version's name, if `model_version` built it (a cheap check before any data loads).

    Raises:
        DeltaRefused: nothing is published, or the live version is another model's.
    """
    client = store_client(store_url)
    keys = RedisKeys()
    raw = client.get(keys.current)
    if raw is None:
        raise DeltaRefused("nothing is published in the store: run a full export first")
    version = raw.decode()
    manifest = client.get(keys.manifest(version))
    live_model = json.loads(manifest).get("model_version") if manifest else None
    if live_model != model_version:
        raise DeltaRefused(
            f"the live version {version} was built by model {live_model}, but this artifact is "
            f"{model_version}: a delta must come from the live model (run a full export to change models)"
        )
    return version


def export_delta(artifact: Path, dataset: Dataset, store_url: str) -> dict[str, Any]:
    """Publishes the changes between the live ads and `dataset`'s ads as one delta.

    Returns:
        What was published: version, seq (None when nothing changed), counts, seconds.

    Raises:
        DeltaRefused: the artifact is not the live version's model (or the live version moved).
    """
    started = time.perf_counter()
    client = store_client(store_url)
    keys = RedisKeys()
    bundle = load_artifact(Path(artifact))
    _check_schema(bundle, dataset)
    check_live_model(store_url, bundle.version)
    live = live_ads(client, keys)
    hashes = dataset.ads.select(bundle.schema.ad_fields).row_hashes()
    ids = dataset.ad_ids.astype(np.int64)
    bids = dataset.ad_bids.astype(np.float32)
    old = [live.state.get(int(i)) for i in ids]
    upsert = np.array([o is None or o[0] != int(h) for o, h in zip(old, hashes, strict=True)], dtype=bool)
    bid_change = np.array(
        [
            o is not None and o[0] == int(h) and not np.isclose(o[1], b, rtol=0, atol=0)
            for o, h, b in zip(old, hashes, bids, strict=True)
        ],
        dtype=bool,
    )
    removed = np.array(sorted(set(live.state) - set(ids.tolist())), dtype=np.int64)
    rows = np.flatnonzero(upsert)
    upsert_rows = None
    changed_ads = dataset.ads.take_rows(rows).select(bundle.schema.ad_fields)
    if len(rows):
        vectors, routes = encode_ads(bundle.model, changed_ads)
        upsert_rows = AdRows.quantize(join_ads(vectors, routes), live.dtype)
    delta = AdDelta(
        base_version=live.version,
        model_version=bundle.version,
        upsert_ids=ids[rows],
        upsert_rows=upsert_rows,
        upsert_bids=bids[rows],
        upsert_hashes=hashes[rows],
        remove_ids=removed,
        bid_ids=ids[bid_change],
        bid_values=bids[bid_change],
        upsert_sparse=changed_ads.sparse,
    )
    summary: dict[str, Any] = {
        "version": live.version,
        "model_version": bundle.version,
        "upserts": len(rows),
        "removals": len(removed),
        "bid_changes": int(bid_change.sum()),
        "chain_before": live.deltas,
        "seq": None,
    }
    if delta.size:
        summary["seq"] = publish_delta(client, keys, delta)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    log.info("delta %s on %s: %s", summary["seq"], live.version, summary)
    return summary


def pause_ads(store_url: str, ad_ids: list[int], paused: bool = True) -> int:
    """Pauses (or resumes) ads on every replica; returns the change number."""
    return set_paused(store_client(store_url), RedisKeys(), ad_ids, paused)
