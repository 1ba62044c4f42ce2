"""Every model-specific loss term. Pure functions of a model's `forward_train` intermediates;
only the offline trainer calls them, and no model class owns a loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from models.base import PrerankModel

__all__ = ["auxiliary_loss", "dat_mimic_loss", "hit_generation_loss", "inttower_contrastive_loss"]


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


def dat_mimic_loss(
    aux: dict[str, torch.Tensor], labels: torch.Tensor, user_weight: float, ad_weight: float
) -> torch.Tensor:
    """DAT's adaptive-mimic (AMM) loss: sum over positive rows of ||normalise(a_u) - sg(p_v)||^2
    and the ad-side mirror.

    Summed like the BCE it is added to; the targets are detached, so only the augmented vectors
    learn from it.

    Args:
        aux: `DAT.forward_train` intermediates: user_repr / ad_repr / user_aug / ad_aug (B, d).
        labels: (B,) in {0, 1}.
        user_weight: weight of the user side's term.
        ad_weight: weight of the ad side's term.
    """
    pos = labels.float()
    user_gap = (F.normalize(aux["user_aug"], dim=-1) - aux["ad_repr"].detach()).pow(2).sum(-1)
    ad_gap = (F.normalize(aux["ad_aug"], dim=-1) - aux["user_repr"].detach()).pow(2).sum(-1)
    return user_weight * (pos * user_gap).sum() + ad_weight * (pos * ad_gap).sum()


def inttower_contrastive_loss(
    aux: dict[str, torch.Tensor], labels: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """IntTower's CIR: InfoNCE over positive rows, cosine / tau, the other positives' ads as
    in-batch negatives (summed).

    Args:
        aux: `IntTower.forward_train` intermediates: user_repr / ad_repr (B, d).
        labels: (B,) in {0, 1}.
        weight: loss weight (0 disables it).
        temperature: tau.
    """
    if weight == 0:
        return torch.zeros((), device=labels.device)
    pos = labels > 0.5
    if int(pos.sum()) < 2:
        return torch.zeros((), device=labels.device)
    user = F.normalize(aux["user_repr"][pos], dim=-1)
    ad = F.normalize(aux["ad_repr"][pos], dim=-1)
    logits = user @ ad.T / temperature
    target = torch.arange(len(user), device=labels.device)
    return weight * F.cross_entropy(logits, target, reduction="sum")


def auxiliary_loss(model: PrerankModel, aux: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The model-specific loss terms (already weighted) that training adds to the summed BCE.

    Args:
        model: the model whose `forward_train` produced `aux`; its config holds the weights.
        aux: that call's intermediates (empty for models without extra terms).
        labels: (B,) in {0, 1}.

    Returns:
        torch.Tensor: scalar; zero for models without extra terms.
    """
    cfg: Any = model.config
    if not aux:
        return torch.zeros((), device=labels.device)
    if model.name == "hit":
        return cfg.gen_loss_weight * hit_generation_loss(aux, labels, cfg.gen_loss)
    if model.name == "dat":
        return dat_mimic_loss(aux, labels, cfg.user_mimic_weight, cfg.ad_mimic_weight)
    if model.name == "inttower":
        return inttower_contrastive_loss(aux, labels, cfg.cir_weight, cfg.cir_temperature)
    return torch.zeros((), device=labels.device)
