"""Version files in a file/object store (fsspec's local backend) with Redis keeping the manifest,
checksums, pointer and events; a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from models.artifact import ArtifactError
from offline.export import export
from offline.publish import RedisPublisher
from prerank.cli import main
from service.store import RedisStore

pytestmark = pytest.mark.integration


def test_a_version_published_to_a_blob_store_serves_and_redis_keeps_only_the_manifest(  # type: ignore[no-untyped-def]
    tiny, tiny_hit, redis_server, tmp_path: Path
) -> None:
    url, blobs = redis_server.url, f"file://{tmp_path / 'blobs'}"
    in_redis = export(tiny_hit.artifact, tiny, url)
    manifest = export(tiny_hit.artifact, tiny, url, blobs=blobs)
    version = manifest["version"]
    client = redis.Redis.from_url(url)
    keys = [k.decode() for k in client.scan_iter(match=f"prerank:version:{version}:*")]
    assert keys == [f"prerank:version:{version}:manifest"]  # no chunks: the bytes are in the blob store
    stored = json.loads(client.get(keys[0]))
    assert all(f["blob"].startswith(blobs) and "chunks" not in f for f in stored["files"])
    on_disk = sum(p.stat().st_size for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    assert on_disk == sum(f["size"] for f in stored["files"])
    # Redis memory per version: the manifest's few kB, against the whole version in chunks
    assert manifest["redis_bytes"] < 20_000 < in_redis["redis_bytes"]
    assert int(client.memory_usage(keys[0])) < 2 * manifest["redis_bytes"]
    # a replica loads it through the manifest's URLs, checksums verified, same scores as the chunked one
    loaded, chunked = RedisStore(url).load(version), RedisStore(url).load(in_redis["version"])
    assert loaded.model_version == chunked.model_version and len(loaded.rows) == len(tiny.ad_ids)
    np.testing.assert_array_equal(loaded.rows.vectors.numpy(), chunked.rows.vectors.numpy())
    # a damaged blob is refused, never served
    target = next(p for p in (tmp_path / "blobs").rglob("index.safetensors"))
    target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        RedisStore(url).load(version)


def test_pruning_a_blob_version_removes_its_files(tiny, tiny_hit, redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, root = redis_server.url, tmp_path / "blobs"
    first = export(tiny_hit.artifact, tiny, url, keep=1, blobs=str(root))["version"]  # a bare directory works too
    assert (root / "prerank" / first).is_dir()
    second = export(tiny_hit.artifact, tiny, url, keep=1, blobs=str(root))["version"]
    assert not (root / "prerank" / first).exists() and (root / "prerank" / second).is_dir()
    assert RedisPublisher(url).current() == second


def test_export_cli_refuses_blobs_without_a_redis_store(
    tiny_hit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    args = ["export", str(tiny_hit.artifact), "--dataset", "synthetic", "--threads", "1"]
    assert main([*args, "--store", f"local:{tmp_path / 's'}", "--blobs", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "goes with a redis:// store" in err and len(err.splitlines()) == 1
