"""Runs the ad tower over the whole corpus and publishes a versioned index to a store.

The version is staged as a directory (model copy + index + user store + manifest), then handed to
the store's publisher (offline.publish), which makes it live all-or-nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import (
    ANN_FILE,
    ANN_PAIRS_FILE,
    MODEL_SUBDIR,
    ArtifactError,
    Bundle,
    IndexWriter,
    StoredRows,
    file_sha256,
    load_artifact,
    write_json,
)
from models.base import AdBatch, PrerankModel, join_ads, split_ads
from models.provenance import code_version
from models.tables import FeatureTable
from offline.ann import build_ann
from offline.data import Dataset
from offline.data.stream import Snapshot
from offline.publish import KEEP_VERSIONS, open_publisher
from storage import parse_store_url

__all__ = ["ad_batches", "encode_ads", "export"]

log = logging.getLogger(__name__)


def ad_batches(model: PrerankModel, ads: FeatureTable, batch_size: int = 8192) -> Iterator[AdBatch]:
    """The ad side over the rows of `ads`, in eval mode, `batch_size` rows at a time, in row
    order: float32 vectors (with routes for routed models)."""
    model.eval()
    table = ads.select(model.schema.ad_fields)
    for s in range(0, ads.n_rows, batch_size):
        with torch.inference_mode():
            v, r = split_ads(model.encode_ad(table.take(np.arange(s, min(s + batch_size, ads.n_rows)))))
        yield join_ads(v.float(), r)


def encode_ads(
    model: PrerankModel, ads: FeatureTable, batch_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ad side over every row of `ads`, in eval mode: (N, ...) float32 rows and routes (or None)."""
    vectors, routes = [], []
    for batch in ad_batches(model, ads, batch_size):
        v, r = split_ads(batch)
        vectors.append(v)
        if r is not None:
            routes.append(r)
    return torch.cat(vectors), (torch.cat(routes) if routes else None)


def _check_schema(bundle: Bundle, dataset: Dataset | Snapshot) -> None:
    theirs = {f.name: f for f in dataset.schema.features}
    for f in bundle.schema.features:
        if theirs.get(f.name) != f:
            raise ArtifactError(f"artifact field {f.name!r} does not match the dataset schema")
    sizes = dataset.schema.vocab_sizes
    for name, size in bundle.schema.vocab_sizes.items():
        if sizes.get(name) != size:
            raise ArtifactError(
                f"vocabulary {name!r} has {size} entries in the artifact but {sizes.get(name)} in the data "
                "(same dataset and protocol as training?)"
            )


def export(
    artifact: Path,
    dataset: Dataset | Snapshot,
    store_url: str,
    dtype: str = "float32",
    keep: int = KEEP_VERSIONS,
    blobs: str | None = None,
    users: str = "auto",
) -> dict[str, Any]:
    """Encodes every ad with the artifact's model and publishes a new index version.

    `blobs`: an fsspec URL where a redis:// store's version files go (Redis keeps the manifest).
    `users`: auto, replicated or per-request (see `offline.publish.open_publisher`).

    Returns:
        The published manifest.
    """
    parse_store_url(store_url)  # a bad URL fails before any work
    bundle = load_artifact(Path(artifact))
    _check_schema(bundle, dataset)
    manifest = {
        "model_version": bundle.version,
        "model_name": bundle.model.name,
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "data_sha256": dataset.checksum,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ad_table = dataset.ads.select(bundle.schema.ad_fields)
    publisher = open_publisher(store_url, keep, blobs, users)
    staged = publisher.staging_dir()
    try:
        shutil.copytree(artifact, staged / MODEL_SUBDIR)
        t0 = time.perf_counter()
        # the ad tower's batches go straight into the index file: no whole-corpus copy in memory
        with IndexWriter(
            staged / "index",
            ad_ids=dataset.ad_ids,
            bids=dataset.ad_bids,
            dtype=dtype,
            ad_hashes=ad_table.row_hashes(),
            ad_sparse=ad_table.sparse,
        ) as writer:
            for batch in ad_batches(bundle.model, dataset.ads):
                writer.add(batch)
            user_table = dataset.users.select(bundle.schema.user_fields)
            writer.finish(user_ids=dataset.user_keys, users=user_table, manifest=manifest)
        log.info("encoded %d ads in %.2fs", writer.n_ads, time.perf_counter() - t0)
        for name in os.listdir(staged / "index"):
            os.replace(staged / "index" / name, staged / name)
        (staged / "index").rmdir()
        if bundle.model.ann_searchable:
            import faiss

            # built from the stored rows (what the service scores), read back a range at a time
            rows = StoredRows(staged / "index.safetensors")
            views = {ANN_FILE: "heads"}
            if rows[0:1].shape[1] == 2:  # two heads: MaxSim's cross terms get their own index
                views[ANN_PAIRS_FILE] = "pairs"
            checksums = json.loads((staged / "manifest.json").read_text())
            for name, view in views.items():
                t0 = time.perf_counter()
                faiss.write_index(build_ann(rows, view), str(staged / name))
                log.info("built the %s ANN index in %.1fs", view, time.perf_counter() - t0)
                checksums["checksums"][name] = file_sha256(staged / name)
            write_json(staged / "manifest.json", checksums)
        full: dict[str, Any] = json.loads((staged / "manifest.json").read_text())
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    published = publisher.publish(staged, full)
    log.info("published %s to %s", published["version"], store_url)
    return published
