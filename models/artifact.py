"""The on-disk contract between the offline job and the service (safetensors + JSON, no pickle).

A model artifact is a directory::

    config.json         {"model": name, "config": {...}}
    schema.json         FeatureSchema.to_dict()
    vocab.json          {vocab name: [token, ...]}   (id = position + 1, 0 = unknown),
                        or {vocab name: {"hash_buckets": N}} for a hashed field
    weights.safetensors the uncompiled module's state_dict
    meta.json           format version, model version, seed, protocol, data checksum, code version, metrics
    calibration.json    optional: the logit -> pCTR calibrator (models.calibration), checksummed in meta

An index version is a directory::

    index.safetensors   ad_ids int64 (N,), vectors (N, ...), bids float32 (N,) [, scales (N,)]
                        [, routes int64 (N,): the row of the user output each ad is scored against]
    users.safetensors   user feature table (user/…) for requests that send only a user id
    user_ids.json       user keys, row order of the user table
    ads.faiss           FAISS index over the ad heads for max inner product (id = row * H_a + head)
    ads-pairs.faiss     ads with two heads: FAISS index over [a_1, a_2] and [a_2, a_1] (id = row * 2 + pair)
    manifest.json       version, model version, shape, dtype, checksums, created time
    model/              the model artifact the vectors were computed with

How versions are kept and named in a store (local directory or Redis) is `storage/`'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.base import AdBatch, PrerankModel, split_ads
from models.calibration import CALIBRATION_FILE, Calibrator
from models.features import FeatureSchema, Vocabulary
from models.registry import build_model
from models.rows import VECTOR_DTYPES, AdRows
from models.tables import FeatureTable
from models.tensorfile import TensorFileWriter, read_rows, read_tensors

__all__ = [
    "ANN_FILE",
    "ANN_PAIRS_FILE",
    "FORMAT_VERSION",
    "MODEL_SUBDIR",
    "VECTOR_DTYPES",
    "ArtifactError",
    "Bundle",
    "IndexData",
    "file_sha256",
    "load_artifact",
    "load_index",
    "save_artifact",
    "IndexWriter",
    "StoredRows",
    "write_json",
]

FORMAT_VERSION = 1
#: FAISS index over the ad heads for maximum inner product: L2 IVF over [a, sqrt(M^2 - |a|^2)],
#: queried with [u, 0]; FAISS id = ad row * H_a + head (offline/ann.py).
ANN_FILE = "ads.faiss"
#: The pairs index (offline/ann.py), beside ANN_FILE for ads with two heads.
ANN_PAIRS_FILE = "ads-pairs.faiss"
#: The model artifact inside an index version directory.
MODEL_SUBDIR = "model"


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
    calibrator: Calibrator = field(default_factory=Calibrator)  # logit -> served pCTR

    @property
    def version(self) -> str:
        return str(self.meta["model_version"])


def save_artifact(
    directory: Path,
    model: PrerankModel,
    vocabs: dict[str, Vocabulary],
    meta: dict[str, Any],
    calibrator: Calibrator | None = None,
) -> str:
    """Writes a model artifact and returns its model version.

    The version is the model name plus a digest of the weights, and of `calibration.json` when the
    calibrator is not the identity (it changes every served pCTR, so it is part of the model).
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in _unique_state(model).items()}
    weights = directory / "weights.safetensors"
    save_file(state, str(weights))
    digest = file_sha256(weights)
    extra: dict[str, Any] = {}
    identity = digest
    if calibrator is not None and calibrator != Calibrator():
        extra["calibration_sha256"] = file_sha256(calibrator.save(directory))
        extra["calibration_method"] = calibrator.method
        identity = hashlib.sha256((digest + extra["calibration_sha256"]).encode()).hexdigest()
    else:
        (directory / CALIBRATION_FILE).unlink(missing_ok=True)
    version = f"{model.name}-{identity[:12]}"
    write_json(directory / "config.json", {"model": model.name, "config": asdict(model.config)})
    write_json(directory / "schema.json", model.schema.to_dict())
    write_json(directory / "vocab.json", {k: v.to_json() for k, v in vocabs.items()})
    write_json(
        directory / "meta.json",
        {**meta, **extra, "format_version": FORMAT_VERSION, "model_version": version, "weights_sha256": digest},
    )
    return version


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys that name a tensor an earlier key already names (a shared embedding table)."""
    first: dict[tuple[int, tuple[int, ...]], str] = {}
    aliases = {}
    for key, value in model.state_dict(keep_vars=True).items():
        ident = (id(value), tuple(value.shape))
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    return aliases


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (safetensors refuses tensors sharing memory)."""
    aliases = _aliases(model)
    return {k: v for k, v in model.state_dict().items() if k not in aliases}


def _with_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved state with the keys of shared tensors filled in again.

    Raises:
        ArtifactError: the file holds two different tensors where the model shares one (weights
            saved before the fields' tables were shared): loading would keep only one of them.
    """
    aliases = _aliases(model)
    for key, canonical in aliases.items():
        if key in state and canonical in state and not torch.equal(state[key], state[canonical]):
            raise ArtifactError(
                f"weights hold separate tables {canonical!r} and {key!r} where the model shares one "
                "(trained before shared vocabularies shared tables): retrain, or set share_tables false"
            )
    return {**state, **{k: state[v] for k, v in aliases.items() if v in state}}


def load_artifact(directory: Path, device: str = "cpu") -> Bundle:
    """Rebuilds the model from an artifact directory, verifying the weights checksum."""
    directory = Path(directory)
    meta = _read_json(directory / "meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format {meta.get('format_version')!r}")
    config = _read_json(directory / "config.json")
    schema = FeatureSchema.from_dict(_read_json(directory / "schema.json"))
    vocabs = {k: Vocabulary.from_json(v) for k, v in _read_json(directory / "vocab.json").items()}
    weights = directory / "weights.safetensors"
    if not weights.exists():
        raise ArtifactError(f"missing weights.safetensors in {directory}")
    if file_sha256(weights) != meta.get("weights_sha256"):
        raise ArtifactError(f"weights checksum mismatch in {directory}")
    model = build_model(config["model"], schema, config["config"])
    try:
        model.load_state_dict(_with_aliases(model, load_file(str(weights))))
    except RuntimeError as exc:
        raise ArtifactError(f"weights do not fit the {config['model']} config: {exc}") from None
    model.eval().to(device)
    calibration = directory / CALIBRATION_FILE
    recorded = meta.get("calibration_sha256")
    if recorded is not None and (not calibration.exists() or file_sha256(calibration) != recorded):
        raise ArtifactError(f"calibration.json missing or checksum mismatch in {directory}")
    try:
        calibrator = Calibrator.load(directory) if "calibration_sha256" in meta else Calibrator()
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"invalid calibration.json in {directory}: {exc}") from None
    return Bundle(model, schema, vocabs, meta, calibrator)


@dataclass
class IndexData:
    """One version of the ad index plus the user feature store, as loaded into memory."""

    manifest: dict[str, Any]
    ad_ids: np.ndarray  # int64 (N,)
    rows: AdRows  # (N, ...) in the stored dtype, with scales (int8) and routes (FIT)
    bids: np.ndarray  # float32 (N,)
    user_ids: list[str]
    users: FeatureTable
    ad_hashes: np.ndarray | None = None  # uint64 (N,) feature digest per ad (FeatureTable.row_hashes)
    ad_sparse: dict[str, np.ndarray] = field(default_factory=dict)  # encoded sparse ad fields (N,) each


class IndexWriter:
    """One index version written into `directory` (which must be new) as the ad tower produces
    its rows: `add` quantises each batch to the stored dtype and writes it in place in
    index.safetensors (`models.tensorfile`), so no copy of the whole matrix is ever held;
    `finish` writes the user store and the manifest. Use it as a context manager: on an exception
    the partial index file is removed.

    Args:
        ad_ids, bids: (N,) per ad, in row order.
        dtype: the stored dtype of the rows (`VECTOR_DTYPES`).
        ad_hashes: uint64 (N,) feature digest per ad (`FeatureTable.row_hashes`), for delta exports.
        ad_sparse: encoded sparse ad fields (N,) each.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ad_ids: np.ndarray,
        bids: np.ndarray,
        dtype: str,
        ad_hashes: np.ndarray | None = None,
        ad_sparse: dict[str, np.ndarray] | None = None,
    ) -> None:
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")
        directory.mkdir(parents=True)
        self.directory, self.dtype = directory, dtype
        self.n_ads = len(ad_ids)
        self._columns: dict[str, torch.Tensor] = {
            "ad_ids": torch.from_numpy(np.ascontiguousarray(ad_ids, dtype=np.int64)),
            "bids": torch.from_numpy(np.ascontiguousarray(bids, dtype=np.float32)),
        }
        if ad_hashes is not None:
            self._columns["ad_hashes"] = torch.from_numpy(
                np.ascontiguousarray(ad_hashes, dtype=np.uint64).view(np.int64)
            )
        for name, col in (ad_sparse or {}).items():
            self._columns[f"ad/sparse/{name}"] = torch.from_numpy(np.ascontiguousarray(col, dtype=np.int64))
        self._file: TensorFileWriter | None = None
        self._shape: list[int] = []
        self._rows = 0

    @property
    def path(self) -> Path:
        return self.directory / "index.safetensors"

    def _open(self, first: AdRows) -> TensorFileWriter:
        n = self.n_ads
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
            "vectors": (first.vectors.dtype, (n, *first.vectors.shape[1:]))
        }
        if first.scales is not None:
            specs["scales"] = (torch.float32, (n,))
        if first.routes is not None:
            specs["routes"] = (torch.int64, (n,))
        specs.update({name: (col.dtype, tuple(col.shape)) for name, col in self._columns.items()})
        writer = TensorFileWriter(self.path, specs)
        for name, col in self._columns.items():
            writer.write(name, col)
        self._columns = {}
        self._shape = [n, *first.vectors.shape[1:]]
        return writer

    def add(self, ads: AdBatch) -> None:
        """The next rows, in row order, as the ad tower returns them (float32)."""
        rows = AdRows.quantize(ads, self.dtype)
        if self._file is None:
            self._file = self._open(rows)
        self._file.write("vectors", rows.vectors, self._rows)
        if rows.scales is not None:
            self._file.write("scales", rows.scales, self._rows)
        if rows.routes is not None:
            self._file.write("routes", rows.routes, self._rows)
        self._rows += len(rows)

    def finish(self, *, user_ids: list[str], users: FeatureTable, manifest: dict[str, Any]) -> dict[str, Any]:
        """Closes the index file (every row written), writes the user store and the manifest and
        returns the manifest."""
        if self._file is None:
            raise ValueError("an index needs at least one ad")
        self._file.close()
        directory = self.directory
        save_file(users.to_tensors("user"), str(directory / "users.safetensors"))
        write_json(directory / "user_ids.json", user_ids)
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "n_ads": self.n_ads,
            "n_users": len(user_ids),
            "shape": self._shape,
            "dtype": self.dtype,
            "checksums": {
                name: file_sha256(directory / name)
                for name in ("index.safetensors", "users.safetensors", "user_ids.json")
            },
        }
        write_json(directory / "manifest.json", full)
        return full

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self._file is not None:
            self._file.abort()


class StoredRows:
    """The ad rows of an index file, read a row range at a time as the model scores them
    (float32; int8 dequantised): `len()` and slicing, like an (N, ...) tensor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with safe_open(str(self.path), framework="pt") as f:
            self._int8 = "scales" in set(f.keys())
            self._len = int(f.get_slice("vectors").get_shape()[0])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self._len)
        if step != 1:
            raise ValueError("StoredRows reads contiguous row ranges")
        vectors = read_rows(self.path, "vectors", start, stop)
        scales = read_rows(self.path, "scales", start, stop) if self._int8 else None
        out, _ = split_ads(AdRows(vectors, scales).dequantized())
        return out.float()


def load_index(directory: Path) -> IndexData:
    """Loads and verifies one index version (checksums, shapes, dtype)."""
    manifest = _read_json(directory / "manifest.json")
    for name, expected in manifest.get("checksums", {}).items():
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"index {manifest.get('version')}: missing {name}")
        if file_sha256(path) != expected:
            raise ArtifactError(f"index {manifest.get('version')}: checksum mismatch in {name}")
    tensors = read_tensors(directory / "index.safetensors")  # resident, not memory-mapped
    vectors = tensors["vectors"]
    if list(vectors.shape) != manifest["shape"] or str(vectors.dtype).removeprefix("torch.") != manifest["dtype"]:
        raise ArtifactError(
            f"index {manifest.get('version')}: vectors {tuple(vectors.shape)} {vectors.dtype} "
            f"do not match the manifest {manifest['shape']} {manifest['dtype']}"
        )
    routes = tensors.get("routes")
    if routes is not None and routes.shape != (vectors.shape[0],):
        raise ArtifactError(f"index {manifest.get('version')}: {tuple(routes.shape)} routes for {len(vectors)} ads")
    if manifest.get("user_store", {}).get("mode") == "per-request":  # rows in the store, read per request
        user_ids, users = [], FeatureTable(0)
    else:
        user_ids = _read_json(directory / "user_ids.json")
        users = FeatureTable.from_tensors(read_tensors(directory / "users.safetensors"), "user", len(user_ids))
    scales = tensors.get("scales")
    if (scales is None) != (manifest["dtype"] != "int8") or (scales is not None and scales.shape != (len(vectors),)):
        raise ArtifactError(f"index {manifest.get('version')}: int8 rows need one scale per row, other dtypes none")
    return IndexData(
        manifest=manifest,
        ad_ids=tensors["ad_ids"].numpy(),
        rows=AdRows(vectors, scales, routes),
        bids=tensors["bids"].numpy(),
        user_ids=user_ids,
        users=users,
        ad_hashes=tensors["ad_hashes"].numpy().view(np.uint64) if "ad_hashes" in tensors else None,
        ad_sparse={k.removeprefix("ad/sparse/"): t.numpy() for k, t in tensors.items() if k.startswith("ad/sparse/")},
    )
