"""Late-interaction scoring shared by the multi-head models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["maxsim"]


def maxsim(user: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
    """Sum over user heads of the best-matching ad head's dot product.

    One user against many ads (serving) is a single skinny GEMM over the flattened ad heads;
    paired rows (training) use a batched matmul.

    Args:
        user: (B, H_u, p) with B = 1 (broadcast over every ad) or B = N (paired rows).
        ads: (N, H_a, p), float32 or bfloat16.

    Returns:
        torch.Tensor: (N,) float32 raw similarity, no bias.
    """
    n, heads, p = ads.shape
    if user.dtype != ads.dtype:
        user = user.to(ads.dtype)
    if user.shape[0] == 1 and n != 1:
        sims = F.linear(ads.reshape(n * heads, p), user[0]).view(n, heads, -1)  # (N, H_a, H_u)
    else:
        sims = torch.matmul(ads, user.transpose(-1, -2))  # (N, H_a, H_u)
    best = sims[:, 0, :] if heads == 1 else sims.amax(dim=1)  # (N, H_u)
    return best.sum(-1).float()
