"""Late-interaction scoring shared by the multi-head models."""

from __future__ import annotations

import torch

__all__ = ["maxsim"]


def maxsim(user: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
    """Sum over user heads of the best-matching ad head's dot product.

    One user against many ads (serving) is one GEMM laid out user-major: (H_u, p) x (p, N * H_a),
    so the long dimension (every ad head) is the one the kernel vectorises over. This is 2.6x
    faster than (N * H_a, p) x (p, H_u) for HIT's 2 x 16 heads on our CPU. Paired rows (training)
    use a batched matmul.

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
        sims = torch.mm(user[0], ads.reshape(n * heads, p).T).view(-1, n, heads)  # (H_u, N, H_a)
        best = sims[:, :, 0] if heads == 1 else sims.amax(dim=2)  # (H_u, N)
        return best.sum(0).float()
    sims = torch.matmul(ads, user.transpose(-1, -2))  # (N, H_a, H_u)
    paired = sims[:, 0, :] if heads == 1 else sims.amax(dim=1)  # (N, H_u)
    return paired.sum(-1).float()
