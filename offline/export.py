"""Runs the ad tower over the whole corpus and publishes a versioned index to a store.

Publishing is all-or-nothing: a version is written under a temporary name, verified by reading
it back, renamed into place, and only then does the `CURRENT` pointer move (atomic rename).
A failure at any step leaves the live version untouched and removes the partial files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import (
    CURRENT_POINTER,
    MODEL_SUBDIR,
    VERSIONS_DIR,
    ArtifactError,
    Bundle,
    load_artifact,
    load_index,
    parse_store_url,
    save_index,
    version_sort_key,
    write_json,
)
from models.tables import FeatureTable
from offline.data import Dataset
from offline.train import code_version

__all__ = ["encode_ads", "export", "publish_local"]

log = logging.getLogger(__name__)
KEEP_VERSIONS = 5


@torch.inference_mode()
def encode_ads(bundle: Bundle, ads: FeatureTable, batch_size: int = 8192) -> torch.Tensor:
    """The ad tower over every row of `ads`, in eval mode: (N, ...) float32."""
    model = bundle.model.eval()
    table = ads.select(bundle.schema.ad_fields)
    parts = [
        model.encode_ad(table.take(np.arange(s, min(s + batch_size, ads.n_rows)))).float()
        for s in range(0, ads.n_rows, batch_size)
    ]
    return torch.cat(parts)


def _check_schema(bundle: Bundle, dataset: Dataset) -> None:
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
    artifact: Path, dataset: Dataset, store_url: str, dtype: str = "float32", keep: int = KEEP_VERSIONS
) -> dict[str, Any]:
    """Encodes every ad with the artifact's model and publishes a new index version.

    Returns:
        The published manifest.
    """
    scheme, location = parse_store_url(store_url)
    bundle = load_artifact(Path(artifact))
    _check_schema(bundle, dataset)
    t0 = time.perf_counter()
    vectors = encode_ads(bundle, dataset.ads)
    log.info("encoded %d ads in %.2fs -> %s", len(vectors), time.perf_counter() - t0, tuple(vectors.shape))
    manifest = {
        "model_version": bundle.version,
        "model_name": bundle.model.name,
        "dataset": dataset.name,
        "protocol": dataset.protocol,
        "data_sha256": dataset.checksum,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload = {
        "ad_ids": dataset.ad_ids,
        "vectors": vectors,
        "bids": dataset.ad_bids,
        "dtype": dtype,
        "user_ids": dataset.user_keys,
        "users": dataset.users.select(bundle.schema.user_fields),
    }
    if scheme == "local":
        return publish_local(Path(location), Path(artifact), payload, manifest, keep)
    raise ArtifactError("the redis store is not available in this build; use local:DIR")


def _next_version(versions: Path) -> str:
    existing = [p.name for p in versions.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()]
    return f"v{max((version_sort_key(v) for v in existing), default=0) + 1:06d}"


def publish_local(
    root: Path, artifact: Path, payload: dict[str, Any], manifest: dict[str, Any], keep: int = KEEP_VERSIONS
) -> dict[str, Any]:
    """Publishes into a local store directory; see the module docstring for the guarantees."""
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    staging = versions / f".staging-{uuid.uuid4().hex}"
    try:
        shutil.copytree(artifact, staging / MODEL_SUBDIR)
        full = save_index(staging / "index", **payload, manifest=manifest)
        for name in os.listdir(staging / "index"):
            os.replace(staging / "index" / name, staging / name)
        (staging / "index").rmdir()
        while True:  # concurrent publishers: the first rename to a free name wins
            version = _next_version(versions)
            full["version"] = version
            write_json(staging / "manifest.json", full)
            try:
                os.rename(staging, versions / version)
                break
            except OSError:
                if not (versions / version).exists():
                    raise
        load_index(versions / version)  # read back and verify before going live
        load_artifact(versions / version / MODEL_SUBDIR)
        pointer = root / f".{CURRENT_POINTER}.{uuid.uuid4().hex}"
        pointer.write_text(version + "\n")
        os.replace(pointer, root / CURRENT_POINTER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(versions, keep, current=version)
    log.info("published %s to %s", version, root)
    return full


def _prune(versions: Path, keep: int, current: str) -> None:
    names = sorted(
        (p.name for p in versions.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()),
        key=version_sort_key,
    )
    for name in names[:-keep] if keep > 0 else []:
        if name != current:
            shutil.rmtree(versions / name, ignore_errors=True)
