"""Model-specific loss terms. Pure functions; only the offline trainer calls them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hit_generation_loss"]


def _class_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def hit_generation_loss(aux: dict[str, torch.Tensor], labels: torch.Tensor, mode: str = "mimic") -> torch.Tensor:
    """HIT generation loss between each side's mimic vectors and the opposite representation.

    The opposite representation is always detached, so only generators learn from this loss.

    Args:
        aux: `HIT.forward_train` intermediates: user_repr / ad_repr (B, H*p) and
            user_mimic / ad_mimic (B, 2, H*p) where present.
        labels: (B,) in {0, 1}.
        mode: "mimic" (1 - cos on the generator's own class, averaged over that class),
            "repo_head" (label-masked cos minimised, averaged over the batch, as the reference
            code's HEAD), "repo_jul2024" (1 - cos for generator 1 and 1 + cos for generator 2
            over all rows, the run that reported AUC 0.9048).

    Returns:
        torch.Tensor: scalar loss.
    """
    pos = labels.float()
    neg = 1.0 - pos
    total = torch.zeros((), device=labels.device)
    for mimic_key, target_key in (("user_mimic", "ad_repr"), ("ad_mimic", "user_repr")):
        if mimic_key not in aux:
            continue
        mimic, target = aux[mimic_key], aux[target_key].detach()
        cos_pos = F.cosine_similarity(mimic[:, 0], target, dim=-1)
        cos_neg = F.cosine_similarity(mimic[:, 1], target, dim=-1)
        if mode == "mimic":
            total = total + _class_mean(1 - cos_pos, pos) + _class_mean(1 - cos_neg, neg)
        elif mode == "repo_head":
            total = total + (pos * cos_pos).mean() + (neg * cos_neg).mean()
        elif mode == "repo_jul2024":
            total = total + (1 - cos_pos.mean()) + (1 + cos_neg.mean())
        else:
            raise ValueError(f"unknown generation-loss mode {mode!r}")
    return total
