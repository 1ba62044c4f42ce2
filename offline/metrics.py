"""Offline metrics: AUC, GAUC, LogLoss, ECE and RelaImpr."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

__all__ = ["auc", "ece", "gauc", "logloss", "ranking_consistency", "rela_impr", "revenue_at_k", "revenue_ratio_at_k"]


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


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width probability bins of |mean label - mean pCTR|,
    weighted by the bin's share of rows."""
    labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(labels[mask].mean() - probs[mask].mean())
    return float(total)


def gauc(users: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC, over users with both a click and a non-click."""
    users, labels, probs = np.asarray(users), np.asarray(labels), np.asarray(probs)
    order = np.argsort(users, kind="stable")
    users, labels, probs = users[order], labels[order], probs[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    weighted, weight = 0.0, 0
    for s, e in zip(starts, ends, strict=True):
        y = labels[s:e]
        if 0 < y.sum() < len(y):
            weighted += (e - s) * roc_auc_score(y, probs[s:e])
            weight += e - s
    if weight == 0:
        raise ValueError("GAUC needs at least one user with both a click and a non-click")
    return float(weighted / weight)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, ties broken by position (the serving order)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]


def revenue_at_k(bids: np.ndarray, clicks: np.ndarray, ecpm: np.ndarray, k: int) -> float:
    """Sum of bid x click (or true click probability) over the k candidates ranked best by eCPM."""
    top = _top(ecpm, k)
    return float((np.asarray(bids, np.float64)[top] * np.asarray(clicks, np.float64)[top]).sum())


def revenue_ratio_at_k(bids: np.ndarray, clicks: np.ndarray, ecpm: np.ndarray, k: int) -> float:
    """revenue@k of the given order over that of the oracle order (by bid x true click)."""
    bids, clicks = np.asarray(bids, np.float64), np.asarray(clicks, np.float64)
    oracle = revenue_at_k(bids, clicks, bids * clicks, k)
    if oracle <= 0:
        raise ValueError("the oracle revenue@k is 0: no candidate has a bid and a click")
    return revenue_at_k(bids, clicks, ecpm, k) / oracle


def ranking_consistency(reference: np.ndarray, scores: np.ndarray, k: int, big_k: int) -> float:
    """Recall@k of the ranking stage: the share of the reference's top k that the pre-ranker's
    top K keeps (COPR's consistency measure), K >= k."""
    if big_k < k:
        raise ValueError(f"K ({big_k}) must be >= k ({k})")
    return len(np.intersect1d(_top(reference, k), _top(scores, big_k))) / k
