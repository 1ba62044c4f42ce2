"""A safetensors file written in row ranges, and read back in row ranges, without holding a tensor
whole in memory.

`safetensors.torch.save_file` serialises every tensor into one buffer before writing it, so an
exporter that calls it holds its output twice (a 10M-ad index: gigabytes). The format is a
little-endian u64 header length, a JSON header (each tensor's dtype, shape and byte range) and the
tensors' bytes back to back. When every tensor's dtype and shape are known up front the header can
be written first and each tensor filled at its offset with positional writes, in any order and in
row ranges, as the ad tower produces them; `safetensors` reads the result like any other file.
`read_rows` reads one row range through `safetensors.safe_open` (its mapping is released after
each range), so a pass over the file keeps one range resident; `read_tensors` reads a whole file
into the process's own memory, where `load_file` would leave its tensors in the page cache.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

__all__ = ["TensorFileWriter", "read_rows", "read_tensors"]

#: The format's dtype names.
_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
}


class TensorFileWriter:
    """Writes the tensors `specs` names ({name: (dtype, shape)}) into a new safetensors file.

    `write(name, tensor, start)` puts rows `start..start+len(tensor)` of `name` in place; `close()`
    checks that every row of every tensor was written (a bug otherwise). Use it as a context
    manager; on an exception the partial file is removed.
    """

    def __init__(self, path: Path, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
        self.path = Path(path)
        header: dict[str, object] = {}
        self._layout: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}  # offset, row bytes, dtype, shape
        offset = 0
        for name, (dtype, shape) in specs.items():
            if dtype not in _DTYPES or not shape:
                raise ValueError(f"tensor {name!r}: {dtype} {shape} (needs a safetensors dtype and a row axis)")
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            self._layout[name] = (offset, row_bytes, dtype, tuple(shape))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self._data_start = 8 + len(encoded)
        self._written = dict.fromkeys(specs, 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.pwrite(self._fd, len(encoded).to_bytes(8, "little") + encoded, 0)
        os.ftruncate(self._fd, self._data_start + offset)

    def write(self, name: str, tensor: torch.Tensor | np.ndarray, start: int = 0) -> None:
        """Rows `start .. start + len(tensor)` of tensor `name` (its dtype and row shape)."""
        offset, row_bytes, dtype, shape = self._layout[name]
        t = torch.as_tensor(tensor)
        rows = int(t.shape[0]) if t.dim() else -1
        if t.dtype != dtype or tuple(t.shape[1:]) != shape[1:] or not 0 <= start <= start + rows <= shape[0]:
            raise ValueError(f"{name}: rows {start}.. of {t.dtype} {tuple(t.shape)} do not fit {dtype} {shape}")
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        view = data.data
        position = self._data_start + offset + start * row_bytes
        while view:  # pwrite may write less than asked
            done = os.pwrite(self._fd, view, position)
            view, position = view[done:], position + done
        self._written[name] += rows

    def close(self) -> None:
        """Checks that every tensor is complete and closes the file (a RuntimeError names the
        tensors left short: a bug in the caller)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        os.close(fd)
        expected = {name: shape[0] for name, (_, _, _, shape) in self._layout.items()}
        short = {n: (self._written[n], rows) for n, rows in expected.items() if self._written[n] != rows}
        if short:
            raise RuntimeError(f"{self.path.name}: rows written / expected per tensor: {short}")

    def abort(self) -> None:
        """Closes and removes the partial file."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except RuntimeError:
            self.path.unlink(missing_ok=True)
            raise


def read_rows(path: Path, name: str, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of tensor `name` of a safetensors file, as a tensor of its own."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice(name)[start:stop].clone()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, read into the process's own memory.

    `safetensors.torch.load_file` memory-maps the file: its tensors live in the page cache, which
    the kernel may evict at any time (under memory pressure, or by proactive reclaim), and a
    request that touches an evicted row waits for the disk. A server reads its index with this
    instead: each tensor is allocated and filled with plain reads, so its rows stay resident
    (anonymous memory; nothing is paged out without swap) and no mapping is left behind.
    """
    names = {v: k for k, v in _DTYPES.items()}
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        start = 8 + size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            tensor = torch.empty(entry["shape"], dtype=names[entry["dtype"]])
            if tensor.numel() * tensor.element_size() != end - begin:
                raise ValueError(f"{path}: tensor {name!r} spans {end - begin} bytes, not {tuple(tensor.shape)}")
            f.seek(start + begin)
            view = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else np.empty(0, np.uint8)
            if f.readinto(view.data) != end - begin:  # type: ignore[attr-defined]
                raise ValueError(f"{path}: tensor {name!r} is cut short")
            out[name] = tensor
    return out
