"""The index file written a batch at a time: same bytes as a whole-matrix save, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.artifact import IndexWriter, StoredRows, load_index
from models.base import Routed
from models.rows import AdRows
from models.tables import FeatureTable
from models.tensorfile import TensorFileWriter, read_rows, read_tensors
from offline.ann import build_ann


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "vectors": torch.randn(37, 2, 5).to(torch.bfloat16),
        "ids": torch.arange(37) * 3,
        "scales": torch.rand(37),
        "codes": torch.randint(-127, 128, (37, 4), dtype=torch.int8),
    }


def test_a_file_written_in_row_ranges_in_any_order_reads_as_the_whole_save(tmp_path: Path) -> None:
    tensors = _tensors()
    with TensorFileWriter(tmp_path / "a.safetensors", {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}) as w:
        for start in (30, 0, 10, 20):  # out of order, uneven last range
            w.write("vectors", tensors["vectors"][start : start + 10], start)
        w.write("codes", tensors["codes"])
        w.write("scales", tensors["scales"])
        w.write("ids", tensors["ids"])
    back = load_file(str(tmp_path / "a.safetensors"))
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert torch.equal(read_rows(tmp_path / "a.safetensors", "vectors", 5, 9), tensors["vectors"][5:9])
    save_file(tensors, str(tmp_path / "b.safetensors"))  # the library's writer: the same payload size
    assert (tmp_path / "a.safetensors").stat().st_size - (tmp_path / "b.safetensors").stat().st_size < 64


def test_read_tensors_reads_into_memory_what_load_file_maps(tmp_path: Path) -> None:
    tensors = {**_tensors(), "empty": torch.zeros(0, 3), "wide": torch.arange(12, dtype=torch.int32).view(3, 4)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    mapped, read = load_file(str(tmp_path / "a.safetensors")), read_tensors(tmp_path / "a.safetensors")
    assert read.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
    size = (tmp_path / "a.safetensors").stat().st_size
    header = 8 + int.from_bytes((tmp_path / "a.safetensors").read_bytes()[:8], "little")
    with open(tmp_path / "a.safetensors", "r+b") as f:  # the file changes under both readers
        f.seek(header)
        f.write(b"\x7f" * (size - header))
    assert not torch.equal(mapped["ids"], tensors["ids"])  # load_file's tensors are the page cache
    assert all(torch.equal(read[name], tensor) for name, tensor in tensors.items())  # ours are not


def test_a_short_or_misfit_write_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    tensors = _tensors()
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    w = TensorFileWriter(tmp_path / "a.safetensors", specs)
    with pytest.raises(RuntimeError, match=r"'vectors': \(10, 37\)"), w:
        for name in ("ids", "scales", "codes"):
            w.write(name, tensors[name])
        w.write("vectors", tensors["vectors"][:10])
    assert not (tmp_path / "a.safetensors").exists()
    with TensorFileWriter(tmp_path / "b.safetensors", specs) as w:
        with pytest.raises(ValueError, match="do not fit"):
            w.write("vectors", tensors["vectors"][:10].float())  # wrong dtype
        with pytest.raises(ValueError, match="do not fit"):
            w.write("vectors", tensors["vectors"][:10], 30)  # past the end
        w.abort()
    assert not (tmp_path / "b.safetensors").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_an_index_written_batch_by_batch_loads_as_the_quantised_matrix(tmp_path: Path, dtype: str) -> None:
    torch.manual_seed(1)
    vectors, routes = torch.randn(1000, 2, 18), torch.randint(0, 3, (1000,))
    ids, bids = np.arange(1000, dtype=np.int64) * 7 + 2**40, np.linspace(0.1, 2, 1000).astype(np.float32)
    with IndexWriter(tmp_path / "v", ad_ids=ids, bids=bids, dtype=dtype, ad_sparse={"ad_id": ids % 97}) as writer:
        for start in range(0, 1000, 300):
            writer.add(Routed(vectors[start : start + 300], routes[start : start + 300]))
        users = FeatureTable(1, sparse={"user_id": np.ones(1, np.int64)})
        manifest = writer.finish(user_ids=["a"], users=users, manifest={})
    assert manifest["shape"] == [1000, 2, 18] and manifest["dtype"] == dtype and manifest["n_ads"] == 1000
    (tmp_path / "v" / "manifest.json").write_text(json.dumps({**manifest, "version": "v1"}))
    index = load_index(tmp_path / "v")
    whole = AdRows.quantize(Routed(vectors, routes), dtype)
    assert index.rows.routes is not None and torch.equal(index.rows.routes, routes)
    assert torch.equal(index.rows.vectors, whole.vectors)
    if whole.scales is None:
        assert index.rows.scales is None
    else:
        assert index.rows.scales is not None and torch.equal(index.rows.scales, whole.scales)
    np.testing.assert_array_equal(index.ad_ids, ids)
    np.testing.assert_array_equal(index.bids, bids)
    np.testing.assert_array_equal(index.ad_sparse["ad_id"], ids % 97)
    stored = StoredRows(tmp_path / "v" / "index.safetensors")  # what the ANN index is built from
    assert len(stored) == 1000 and stored[0:1].shape == (1, 2, 18)
    dequantized = whole.dequantized()
    assert isinstance(dequantized, Routed)
    torch.testing.assert_close(stored[250:780], dequantized.vectors[250:780].float(), rtol=0, atol=0)


def test_the_ann_index_built_from_the_file_equals_the_one_built_from_the_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import offline.ann

    torch.manual_seed(2)
    vectors = torch.randn(3000, 2, 8) * torch.empty(3000, 1, 1).uniform_(0.2, 3.0)
    with IndexWriter(tmp_path / "v", ad_ids=np.arange(3000), bids=np.ones(3000), dtype="float32") as writer:
        for start in range(0, 3000, 1024):
            writer.add(vectors[start : start + 1024])
        writer.finish(user_ids=[], users=FeatureTable(0), manifest={})
    stored = StoredRows(tmp_path / "v" / "index.safetensors")
    monkeypatch.setattr(offline.ann, "_ADD_BATCH", 1000)  # several read ranges over 6,000 heads
    queries = np.hstack([np.random.default_rng(0).normal(size=(50, 8)), np.zeros((50, 1))]).astype(np.float32)
    from_file, from_matrix = build_ann(stored), build_ann(vectors)  # IVF: its training sample gathered across ranges
    assert type(from_file).__name__ == "IndexIVFFlat"
    assert from_file.ntotal == from_matrix.ntotal == 6000
    np.testing.assert_array_equal(from_file.search(queries, 10)[1], from_matrix.search(queries, 10)[1])
    pairs = build_ann(stored, "pairs")  # [a_1, a_2] and [a_2, a_1] per ad, read in ranges too
    assert type(pairs).__name__ == "IndexIVFScalarQuantizer" and pairs.ntotal == 6000 and pairs.d == 17
    wide = np.hstack([queries[:, :8], queries[:, :8], queries[:, 8:]])
    np.testing.assert_array_equal(pairs.search(wide, 10)[1], build_ann(vectors, "pairs").search(wide, 10)[1])


_BOUNDED = """
import sys, numpy as np, torch
from pathlib import Path
from models.artifact import IndexWriter
from models.tables import FeatureTable

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

n, batch = 1_000_000, 8192
ids = np.arange(n, dtype=np.int64)
rows = torch.randn(batch, 2, 18)
before = hwm()
with IndexWriter(Path(sys.argv[1]), ad_ids=ids, bids=np.ones(n, np.float32), dtype="float32") as w:
    for start in range(0, n, batch):
        w.add(rows[: min(batch, n - start)])
    w.finish(user_ids=[], users=FeatureTable(0), manifest={})
print(hwm() - before)
"""


def test_writing_an_index_holds_one_batch_not_the_matrix(tmp_path: Path) -> None:
    """1M ads x 2 x 18 float32 = 144 MB of rows written; the process grows by far less."""
    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(tmp_path / "v")], capture_output=True, text=True, check=True
    )
    grown = int(out.stdout.strip())
    assert (tmp_path / "v" / "index.safetensors").stat().st_size > 144_000_000
    assert grown < 40 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
