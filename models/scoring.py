"""Late-interaction scoring shared by the multi-head models."""

from __future__ import annotations

import torch

__all__ = ["maxsim"]


def maxsim(user: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
    """Sum over user heads of the best-matching ad head's dot product.

    Args:
        user: (B, H_u, p) with B = 1 (broadcast over every ad) or B = N (paired rows).
        ads: (N, H_a, p).

    Returns:
        torch.Tensor: (N,) raw similarity, no bias.
    """
    if user.dtype != ads.dtype:
        user = user.to(ads.dtype)
    sims = torch.matmul(ads, user.transpose(-1, -2))  # (N, H_a, H_u)
    if sims.shape[1] == 1:
        return sims[:, 0, :].sum(-1).float()
    return sims.amax(dim=1).sum(-1).float()  # (N,)
