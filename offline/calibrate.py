"""Fitting the pCTR calibrator on the validation split, and the calibration metrics.

Three candidates (identity, Platt, isotonic) are compared by 2-fold cross-fitted LogLoss on the
validation rows (each fitted on one half, scored on the other), so a flexible isotonic map is not
chosen for fitting its own rows; the winner is refitted on every validation row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from models.calibration import METHODS, Calibrator
from offline.metrics import logloss

__all__ = ["fit_calibrator"]

#: isotonic knots are capped so calibration.json stays small
MAX_KNOTS = 512


def _fit(method: str, z: np.ndarray, y: np.ndarray, offset: float) -> Calibrator:
    if method == "identity" or len(np.unique(y)) < 2:
        return Calibrator("identity", offset)
    if method == "platt":
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z.reshape(-1, 1), y)
        return Calibrator("platt", offset, a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    iso = IsotonicRegression(y_min=1e-6, y_max=1 - 1e-6, out_of_bounds="clip").fit(z, y)
    x, v = np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)
    if len(x) > MAX_KNOTS:
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(int))
        x, v = x[keep], v[keep]
    if len(x) < 2:
        return Calibrator("identity", offset)
    return Calibrator("isotonic", offset, knots_x=tuple(x.tolist()), knots_y=tuple(v.tolist()))


def fit_calibrator(
    logits: np.ndarray, labels: np.ndarray, method: str = "auto", offset: float = 0.0, seed: int = 0
) -> Calibrator:
    """A calibrator for raw validation logits.

    Args:
        logits: the model's raw logits on the validation rows.
        labels: their 0/1 labels.
        method: "auto" (choose by cross-fitted LogLoss), or one of models.calibration.METHODS.
        offset: the negative down-sampling correction log(rate) (0 without down-sampling).
        seed: seeds the 2-fold split.
    """
    z = np.asarray(logits, np.float64) + offset
    y = np.asarray(labels, np.float64)
    if method != "auto":
        if method not in METHODS:
            raise ValueError(f"calibration must be auto or one of {METHODS}, got {method!r}")
        chosen = _fit(method, z, y, 0.0)
        return Calibrator(chosen.method, offset, chosen.a, chosen.b, chosen.knots_x, chosen.knots_y, {"method": method})
    fold = np.random.default_rng(seed).permutation(len(z)) % 2 == 0
    scores: dict[str, Any] = {}
    for name in METHODS:
        losses = []
        for train_part in (fold, ~fold):
            cal = _fit(name, z[train_part], y[train_part], 0.0)
            losses.append(logloss(y[~train_part], cal.probabilities(z[~train_part])))
        scores[name] = float(np.mean(losses))
    best = min(scores, key=scores.__getitem__)
    chosen = _fit(best, z, y, 0.0)
    fit = {"method": "auto", "cross_fitted_logloss": scores, "chosen": chosen.method, "rows": len(z)}
    return Calibrator(chosen.method, offset, chosen.a, chosen.b, chosen.knots_x, chosen.knots_y, fit)
