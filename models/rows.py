"""`AdRows`: the ad rows an index stores, in their stored dtype, and how they are read back.

Every reader of stored rows (the service's gather, offline quantised AUC, the benchmark, export)
goes through this one type, so int8 dequantisation and FIT's routes are handled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.base import AdBatch, join_ads, split_ads

__all__ = ["VECTOR_DTYPES", "AdRows"]

VECTOR_DTYPES = ("float32", "bfloat16", "int8")


def _to(tensor: torch.Tensor | None, device: str | torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


@dataclass(frozen=True)
class AdRows:
    """Stored ad rows.

    Attributes:
        vectors: (N, ...) float32, bfloat16 or int8.
        scales: (N,) float32 per-row scales for int8 rows (value = int8 * scale), else None.
        routes: (N,) int64 for routed models (FIT's meta row of each ad), else None.
    """

    vectors: torch.Tensor
    scales: torch.Tensor | None = None
    routes: torch.Tensor | None = None

    @classmethod
    def quantize(cls, ads: AdBatch, dtype: str) -> AdRows:
        """Casts fp32 tower output to the stored dtype; int8 uses one symmetric scale per row
        (amax / 127, so the largest entry of each row maps to +-127)."""
        vectors, routes = split_ads(ads)
        routes = None if routes is None else routes.to(torch.int64).contiguous()
        if dtype == "float32":
            return cls(vectors.float().contiguous(), None, routes)
        if dtype == "bfloat16":
            return cls(vectors.to(torch.bfloat16).contiguous(), None, routes)
        if dtype == "int8":
            flat = vectors.reshape(len(vectors), -1).float()
            scales = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            q = torch.round(flat / scales[:, None]).clamp(-127, 127).to(torch.int8)
            return cls(q.view_as(vectors).contiguous(), scales.contiguous(), routes)
        raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dtype(self) -> str:
        """The stored dtype's name: float32, bfloat16 or int8."""
        return str(self.vectors.dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        return self.vectors.device

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row (vectors only)."""
        return int(self.vectors[0].numel() * self.vectors.element_size()) if len(self) else 0

    def to(self, device: str | torch.device) -> AdRows:
        """The same rows on `device`."""
        return AdRows(self.vectors.to(device), _to(self.scales, device), _to(self.routes, device))

    def take(self, rows: torch.Tensor) -> AdBatch:
        """Rows `rows` (int64 (n,), on this device) as the model scores them: float32 or bfloat16
        vectors (int8 dequantised with their scales), with routes for routed models."""
        vectors = self.vectors.index_select(0, rows)
        if self.scales is not None:
            vectors = vectors.float() * self.scales.index_select(0, rows).view(-1, *([1] * (vectors.dim() - 1)))
        return join_ads(vectors, None if self.routes is None else self.routes.index_select(0, rows))

    def dequantized(self) -> AdBatch:
        """Every row as the model scores it (see `take`)."""
        vectors = self.vectors
        if self.scales is not None:
            vectors = vectors.float() * self.scales.view(-1, *([1] * (vectors.dim() - 1)))
        return join_ads(vectors, self.routes)
