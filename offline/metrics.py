"""Offline metrics: AUC, LogLoss and RelaImpr."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

__all__ = ["auc", "logloss", "rela_impr"]


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Global ROC AUC."""
    return float(roc_auc_score(labels, probs))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def rela_impr(model_auc: float, base_auc: float) -> float:
    """Relative improvement over a base model, in percent: ((AUC - 0.5) / (base - 0.5) - 1) * 100."""
    if base_auc <= 0.5:
        raise ValueError(f"base AUC must exceed 0.5, got {base_auc}")
    return ((model_auc - 0.5) / (base_auc - 0.5) - 1.0) * 100.0
