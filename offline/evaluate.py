"""The metrics an ad team decides by, for trained artifacts on one dataset.

On the test split: AUC, calibrated LogLoss, ECE and GAUC (the artifact's calibrator applied, as the
server applies it) and a reliability curve. Where the data has a known click probability (the
synthetic worlds' `Dataset.oracle`), also on simulated recall candidate sets: for each of
`n_users` test users, `n_candidates` ads drawn at random, scored and ranked by eCPM = pCTR x bid;
revenue@k is the expected revenue (bid x true click probability) of the top k over that of the
oracle order, and ranking consistency is the share of the reference ranker's top k that the
model's top K keeps (COPR's recall@k). The Bayes AUC of the test rows (true probabilities as
scores) is the ceiling of the AUC column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import Bundle, load_artifact
from models.base import join_ads
from models.rows import AdRows
from offline.data import Dataset
from offline.export import encode_ads
from offline.metrics import auc, ece, gauc, logloss, ranking_consistency, revenue_ratio_at_k
from offline.train import predict_logits

__all__ = ["candidate_scores", "evaluate_artifacts", "reliability"]


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted and observed click rate per equal-count bin of predictions."""
    order = np.argsort(probs, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append({"predicted": float(probs[part].mean()), "observed": float(labels[part].mean()), "n": len(part)})
    return out


@torch.inference_mode()
def candidate_scores(bundle: Bundle, dataset: Dataset, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Calibrated pCTR of each user (a row of the test split's user table, its context included)
    against its candidate ads (rows), (n_users, n_candidates), through the serving path: ad rows
    from the ad tower, one user tower call per user."""
    model = bundle.model
    model.eval()
    vectors, routes = encode_ads(model, dataset.ads)
    ads = AdRows.quantize(join_ads(vectors, routes), "float32")
    user_table = dataset.test.users.select(bundle.schema.user_fields)
    out = np.empty(candidates.shape, np.float64)
    for i, u in enumerate(users):
        user = model.encode_user(user_table.take(np.array([u])))
        batch = ads.take(torch.from_numpy(candidates[i]))
        out[i] = bundle.calibrator.probabilities(model.score(user, batch).float().numpy())
    return out


def evaluate_artifacts(
    artifacts: dict[str, Path],
    dataset: Dataset,
    reference: str | None = None,
    n_users: int = 300,
    n_candidates: int = 1000,
    k: int = 10,
    big_k: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """One row of metrics per artifact (name -> directory), plus the reliability curves.

    Args:
        reference: the name (a key of `artifacts`) of the ranking-stage model for consistency.
    """
    test = dataset.test
    bundles = {name: load_artifact(path) for name, path in artifacts.items()}
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for name, bundle in bundles.items():
        probs = bundle.calibrator.probabilities(predict_logits(bundle.model, test))
        rows[name] = {
            "model_version": bundle.version,
            "auc": auc(test.labels, probs),
            "logloss": logloss(test.labels, probs),
            "ece": ece(test.labels, probs),
            "gauc": gauc(test.user_rows, test.labels, probs),
        }
        curves[name] = reliability(test.labels, probs)
    out: dict[str, Any] = {"rows": rows, "reliability": curves, "k": k, "big_k": big_k}
    if dataset.oracle is None:
        return out
    out["bayes_auc"] = auc(test.labels, dataset.oracle(test.user_rows, test.ad_rows))
    rng = np.random.default_rng(seed)
    users = rng.choice(np.unique(test.user_rows), size=min(n_users, len(np.unique(test.user_rows))), replace=False)
    n = min(n_candidates, dataset.ads.n_rows)
    candidates = np.stack([rng.choice(dataset.ads.n_rows, size=n, replace=False) for _ in users])
    truth = np.stack([dataset.oracle(np.full(n, u), candidates[i]) for i, u in enumerate(users)])
    bids = dataset.ad_bids.astype(np.float64)[candidates]
    scored = {name: candidate_scores(bundle, dataset, users, candidates) for name, bundle in bundles.items()}
    for name, pctr in scored.items():
        ecpm = pctr * bids
        rows[name]["revenue_at_k"] = float(
            np.mean([revenue_ratio_at_k(bids[i], truth[i], ecpm[i], k) for i in range(len(users))])
        )
        if reference is not None:
            ref = scored[reference] * bids
            rows[name]["consistency"] = float(
                np.mean([ranking_consistency(ref[i], ecpm[i], k, big_k) for i in range(len(users))])
            )
    out.update(n_users=len(users), n_candidates=n, reference=reference)
    return out
