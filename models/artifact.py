"""The on-disk contract between the offline job and the service (safetensors + JSON, no pickle).

A model artifact is a directory::

    config.json         {"model": name, "config": {...}}
    schema.json         FeatureSchema.to_dict()
    vocab.json          {vocab name: [token, ...]}   (id = position + 1, 0 = unknown)
    weights.safetensors the uncompiled module's state_dict
    meta.json           format version, model version, seed, protocol, data checksum, code version, metrics

An index version is a directory::

    index.safetensors   ad_ids int64 (N,), vectors (N, ...), bids float32 (N,) [, scales (N,)]
                        [, routes int64 (N,): the row of the user output each ad is scored against]
    users.safetensors   user feature table (user/…) for requests that send only a user id
    user_ids.json       user keys, row order of the user table
    ads.faiss           HNSW index over the ad heads for max inner product (id = row * H_a + head)
    manifest.json       version, model version, shape, dtype, checksums, created time
    model/              the model artifact the vectors were computed with
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.base import PrerankModel
from models.features import FeatureSchema, Vocabulary
from models.registry import build_model
from models.tables import FeatureTable

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "Bundle",
    "IndexData",
    "file_sha256",
    "load_artifact",
    "load_index",
    "quantize",
    "save_artifact",
    "save_index",
    "write_json",
    "ANN_FILE",
    "CURRENT_POINTER",
    "MODEL_SUBDIR",
    "VERSIONS_DIR",
    "parse_store_url",
    "version_sort_key",
    "REDIS_CHUNK_BYTES",
    "RedisKeys",
    "fetch_redis_version",
]

FORMAT_VERSION = 1
VECTOR_DTYPES = ("float32", "bfloat16", "int8")


class ArtifactError(ValueError):
    """An artifact or index that cannot be loaded (missing file, bad checksum, mismatch)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"missing {path.name} in {path.parent}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None


@dataclass
class Bundle:
    """A loaded model artifact."""

    model: PrerankModel
    schema: FeatureSchema
    vocabs: dict[str, Vocabulary]
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta["model_version"])


def save_artifact(directory: Path, model: PrerankModel, vocabs: dict[str, Vocabulary], meta: dict[str, Any]) -> str:
    """Writes a model artifact and returns its model version (name + weights digest)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = directory / "weights.safetensors"
    save_file(state, str(weights))
    digest = file_sha256(weights)
    version = f"{model.name}-{digest[:12]}"
    write_json(directory / "config.json", {"model": model.name, "config": asdict(model.config)})
    write_json(directory / "schema.json", model.schema.to_dict())
    write_json(directory / "vocab.json", {k: v.tokens for k, v in vocabs.items()})
    write_json(
        directory / "meta.json",
        {**meta, "format_version": FORMAT_VERSION, "model_version": version, "weights_sha256": digest},
    )
    return version


def load_artifact(directory: Path, device: str = "cpu") -> Bundle:
    """Rebuilds the model from an artifact directory, verifying the weights checksum."""
    directory = Path(directory)
    meta = _read_json(directory / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format {meta.get('format_version')!r}")
    config = _read_json(directory / "config.json")
    schema = FeatureSchema.from_dict(_read_json(directory / "schema.json"))
    vocabs = {k: Vocabulary(v) for k, v in _read_json(directory / "vocab.json").items()}
    weights = directory / "weights.safetensors"
    if not weights.exists():
        raise ArtifactError(f"missing weights.safetensors in {directory}")
    if file_sha256(weights) != meta.get("weights_sha256"):
        raise ArtifactError(f"weights checksum mismatch in {directory}")
    model = build_model(config["model"], schema, config["config"])
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise ArtifactError(f"weights do not fit the {config['model']} config: {exc}") from None
    model.eval().to(device)
    return Bundle(model, schema, vocabs, meta)


@dataclass
class IndexData:
    """One version of the ad index plus the user feature store, as loaded into memory."""

    manifest: dict[str, Any]
    ad_ids: np.ndarray  # int64 (N,)
    vectors: torch.Tensor  # (N, ...) float32 / bfloat16 / int8
    bids: np.ndarray  # float32 (N,)
    scales: torch.Tensor | None  # float32 (N,) for int8 vectors
    user_ids: list[str]
    users: FeatureTable
    routes: torch.Tensor | None = None  # int64 (N,) for routed models (FIT)


def quantize(vectors: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Casts fp32 ad vectors to the stored dtype; int8 uses one symmetric scale per ad row."""
    if dtype == "float32":
        return vectors.float().contiguous(), None
    if dtype == "bfloat16":
        return vectors.to(torch.bfloat16).contiguous(), None
    if dtype == "int8":
        flat = vectors.reshape(len(vectors), -1).float()
        scales = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(flat / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return q.view_as(vectors).contiguous(), scales
    raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")


def save_index(
    directory: Path,
    *,
    ad_ids: np.ndarray,
    vectors: torch.Tensor,
    bids: np.ndarray,
    dtype: str,
    user_ids: list[str],
    users: FeatureTable,
    manifest: dict[str, Any],
    routes: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Writes one index version into `directory` (which must be new) and returns its manifest."""
    directory.mkdir(parents=True)
    stored, scales = quantize(vectors, dtype)
    tensors = {
        "ad_ids": torch.from_numpy(np.ascontiguousarray(ad_ids, dtype=np.int64)),
        "vectors": stored,
        "bids": torch.from_numpy(np.ascontiguousarray(bids, dtype=np.float32)),
    }
    if scales is not None:
        tensors["scales"] = scales
    if routes is not None:
        tensors["routes"] = routes.to(torch.int64).contiguous()
    save_file(tensors, str(directory / "index.safetensors"))
    save_file(users.to_tensors("user"), str(directory / "users.safetensors"))
    write_json(directory / "user_ids.json", user_ids)
    full = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "n_ads": len(ad_ids),
        "n_users": len(user_ids),
        "shape": list(stored.shape),
        "dtype": dtype,
        "checksums": {
            name: file_sha256(directory / name) for name in ("index.safetensors", "users.safetensors", "user_ids.json")
        },
    }
    write_json(directory / "manifest.json", full)
    return full


def load_index(directory: Path) -> IndexData:
    """Loads and verifies one index version (checksums, shapes, dtype)."""
    manifest = _read_json(directory / "manifest.json")
    for name, expected in manifest.get("checksums", {}).items():
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"index {manifest.get('version')}: missing {name}")
        if file_sha256(path) != expected:
            raise ArtifactError(f"index {manifest.get('version')}: checksum mismatch in {name}")
    tensors = load_file(str(directory / "index.safetensors"))
    vectors = tensors["vectors"]
    if list(vectors.shape) != manifest["shape"] or str(vectors.dtype).removeprefix("torch.") != manifest["dtype"]:
        raise ArtifactError(
            f"index {manifest.get('version')}: vectors {tuple(vectors.shape)} {vectors.dtype} "
            f"do not match the manifest {manifest['shape']} {manifest['dtype']}"
        )
    routes = tensors.get("routes")
    if routes is not None and routes.shape != (vectors.shape[0],):
        raise ArtifactError(f"index {manifest.get('version')}: {tuple(routes.shape)} routes for {len(vectors)} ads")
    user_ids = _read_json(directory / "user_ids.json")
    users = FeatureTable.from_tensors(load_file(str(directory / "users.safetensors")), "user", len(user_ids))
    return IndexData(
        manifest=manifest,
        ad_ids=tensors["ad_ids"].numpy(),
        vectors=vectors,
        bids=tensors["bids"].numpy(),
        scales=tensors.get("scales"),
        user_ids=user_ids,
        users=users,
        routes=routes,
    )


# -- Store layout shared by the publisher (offline) and the follower (service) ---------------

CURRENT_POINTER = "CURRENT"
#: FAISS index over the ad heads for maximum inner product: L2 HNSW over [a, sqrt(M^2 - |a|^2)],
#: queried with [u, 0]; FAISS id = ad row * H_a + head.
ANN_FILE = "ads.faiss"
VERSIONS_DIR = "versions"
MODEL_SUBDIR = "model"


def parse_store_url(url: str) -> tuple[str, str]:
    """Splits a store URL into (scheme, location): `local:DIR` or `redis://host:port/db`."""
    if url.startswith("local:"):
        location = url.removeprefix("local:")
        if not location:
            raise ValueError("store URL 'local:' needs a directory, e.g. local:./store")
        return "local", location
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis", url
    raise ValueError(f"store URL must be local:DIR or redis://..., got {url!r}")


def version_sort_key(version: str) -> int:
    """Index versions are 'v' + a decimal sequence number; they sort by that number."""
    if not version.startswith("v") or not version[1:].isdigit():
        raise ValueError(f"not an index version name: {version!r}")
    return int(version[1:])


# -- Redis key scheme (the clients live in offline/ and service/) ------------------------------

REDIS_PREFIX = "prerank"
REDIS_CHUNK_BYTES = 4 * 1024 * 1024


class RedisKeys:
    """Names of every key a published store uses under one prefix."""

    def __init__(self, prefix: str = REDIS_PREFIX) -> None:
        self.prefix = prefix
        self.current = f"{prefix}:current"
        self.seq = f"{prefix}:seq"
        self.versions = f"{prefix}:versions"  # sorted set: version -> sequence number
        self.events = f"{prefix}:events"  # pub/sub channel: the new current version
        self.lock = f"{prefix}:publish-lock"

    def manifest(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:manifest"

    def chunk(self, version: str, path: str, index: int) -> str:
        return f"{self.prefix}:version:{version}:file:{path}:{index}"

    def version_pattern(self, version: str) -> str:
        return f"{self.prefix}:version:{version}:*"


def fetch_redis_version(
    get_many: Callable[[list[str]], list[bytes | None]], keys: RedisKeys, version: str, dest: Path
) -> dict[str, Any]:
    """Downloads one published version into `dest` (a new directory) and verifies every file.

    Args:
        get_many: a Redis MGET (the caller owns the client).
        keys: the store's key scheme.
        version: e.g. "v000003".
        dest: where the files are written.

    Returns:
        The manifest.

    Raises:
        ArtifactError: missing manifest or chunk, size or checksum mismatch.
    """
    raw = get_many([keys.manifest(version)])[0]
    if raw is None:
        raise ArtifactError(f"version {version}: no manifest in the store")
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"version {version}: manifest is not JSON: {exc}") from None
    dest.mkdir(parents=True)
    for entry in manifest.get("files", []):
        rel = str(entry["path"])
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ArtifactError(f"version {version}: unsafe file path {rel!r}")
        chunks = get_many([keys.chunk(version, rel, i) for i in range(int(entry["chunks"]))])
        if any(c is None for c in chunks):
            raise ArtifactError(f"version {version}: {rel} is incomplete in the store")
        data = b"".join(c for c in chunks if c is not None)
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"version {version}: checksum mismatch in {rel}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    write_json(dest / "manifest.json", {k: v for k, v in manifest.items() if k not in ("files", "published")})
    return manifest
