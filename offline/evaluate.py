"""The metrics an ad team decides by, for trained artifacts on one dataset.

On the test split: AUC, calibrated LogLoss, ECE and GAUC (the artifact's calibrator applied, as the
server applies it) and a reliability curve. Then on simulated recall candidate sets, `n_candidates`
ads for each of `n_users` test users, scored and ranked by eCPM = pCTR x bid: revenue@k is the
revenue (bid x click) of the top k over that of the oracle order, and ranking consistency is the
share of the reference ranker's top k that the model's top K keeps (COPR's recall@k).

* Where the data has a known click probability (the synthetic worlds' `Dataset.oracle`), the
  candidates are ads drawn at random and "click" is the true probability; the Bayes AUC of the
  test rows (true probabilities as scores) is the ceiling of the AUC column.
* On logged data (MovieLens), each user's candidates are the ads of its test rows (clicked where
  one of its rows for that ad is) filled up with random ads it has no test row for (counted as no
  click, the sampled-negative convention), over users with at least one click in the test split.
* Where the data has no bids (every ad's bid equal), or the test split's ad rows are not the
  serving snapshot's (which the bids index), bids are drawn lognormal(0, 0.5) per ad with the
  seed, so that eCPM order differs from pCTR order as it does in an auction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import Bundle, load_artifact
from models.base import join_ads
from models.rows import AdRows
from models.tables import FeatureTable
from offline.data import Dataset
from offline.export import encode_ads
from offline.metrics import auc, ece, gauc, logloss, ranking_consistency, revenue_ratio_at_k
from offline.train import predict_logits
from tools.plotting import pyplot

__all__ = ["candidate_scores", "candidate_sets", "evaluate_artifacts", "plot_reliability", "reliability"]


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted and observed click rate per equal-count bin of predictions."""
    order = np.argsort(probs, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append({"predicted": float(probs[part].mean()), "observed": float(labels[part].mean()), "n": len(part)})
    return out


@torch.inference_mode()
def candidate_scores(
    bundle: Bundle, dataset: Dataset, users: np.ndarray, candidates: np.ndarray, ad_table: FeatureTable | None = None
) -> np.ndarray:
    """Calibrated pCTR of each user (a row of the test split's user table, its context included)
    against its candidate ads (rows of `ad_table`, default the serving snapshot `dataset.ads`),
    (n_users, n_candidates), through the serving path: ad rows from the ad tower, one user tower
    call per user."""
    model = bundle.model
    model.eval()
    vectors, routes = encode_ads(model, dataset.ads if ad_table is None else ad_table)
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
            "gauc": gauc(test.user_groups, test.labels, probs),
        }
        curves[name] = reliability(test.labels, probs)
    out: dict[str, Any] = {"rows": rows, "reliability": curves, "k": k, "big_k": big_k}
    rng = np.random.default_rng(seed)
    users, candidates, truth, ad_table = candidate_sets(dataset, rng, n_users, n_candidates)
    if dataset.oracle is not None:
        out["bayes_auc"] = auc(test.labels, dataset.oracle(test.user_rows, test.ad_rows))
    # The data's bids index the serving snapshot; candidates from the test split's own ad rows (or
    # data without bids) get simulated ones.
    simulated = ad_table is not dataset.ads or bool(np.all(dataset.ad_bids == dataset.ad_bids[0]))
    bids = rng.lognormal(0.0, 0.5, ad_table.n_rows) if simulated else dataset.ad_bids.astype(np.float64)
    bids = bids[candidates]
    scored = {name: candidate_scores(bundle, dataset, users, candidates, ad_table) for name, bundle in bundles.items()}
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
    out.update(
        n_users=len(users),
        n_candidates=candidates.shape[1],
        reference=reference,
        clicks="true probability" if dataset.oracle is not None else "test labels, unlogged candidates as no click",
        bids="simulated lognormal(0, 0.5)" if simulated else "the data's bids",
    )
    return out


def candidate_sets(
    dataset: Dataset, rng: np.random.Generator, n_users: int, n_candidates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, FeatureTable]:
    """Test users (rows of the test split's user table), their candidate ads (n_users, n) as rows
    of the returned ad table, and each candidate's click (true probability, or observed label)."""
    test = dataset.test
    if dataset.oracle is not None:
        pool = np.unique(test.user_rows)
        users = rng.choice(pool, size=min(n_users, len(pool)), replace=False)
        n = min(n_candidates, dataset.ads.n_rows)
        candidates = np.stack([rng.choice(dataset.ads.n_rows, size=n, replace=False) for _ in users])
        truth = np.stack([dataset.oracle(np.full(n, u), candidates[i]) for i, u in enumerate(users)])
        return users, candidates, truth, dataset.ads
    # Logged data: the test split's own ad rows (one per ad), so labels and features line up.
    ads = np.unique(test.ad_rows)
    n = min(n_candidates, len(ads))
    clicked = np.unique(test.user_rows[test.labels > 0.5])
    users = np.sort(rng.choice(clicked, size=min(n_users, len(clicked)), replace=False))
    order = np.argsort(test.user_rows, kind="stable")
    starts = np.searchsorted(test.user_rows[order], users)
    ends = np.searchsorted(test.user_rows[order], users, side="right")
    candidates = np.empty((len(users), n), np.int64)
    truth = np.zeros((len(users), n), np.float64)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        logged = order[s:e]
        # one candidate per ad the user has test rows for, clicked if any of those rows was
        seen, where = np.unique(test.ad_rows[logged], return_inverse=True)
        clicks = np.zeros(len(seen))
        np.maximum.at(clicks, where, test.labels[logged])
        if len(seen) > n:  # keep every click that fits, then non-clicks
            keep = np.argsort(-clicks, kind="stable")[:n]
            seen, clicks = seen[keep], clicks[keep]
        fill = rng.choice(np.setdiff1d(ads, seen), size=n - len(seen), replace=False)
        candidates[i] = np.r_[seen, fill]
        truth[i, : len(seen)] = clicks
    return users, candidates, truth, test.ads


def plot_reliability(sources: list[Path], path: Path, what: str) -> None:
    """Predicted against observed CTR per decile of calibrated pCTR: one panel per evaluation file
    (`evaluate_artifacts`' output), titled by `what` and the file's folder."""
    if not sources:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sources), figsize=(4.5 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        result = json.loads(source.read_text())
        top = 0.0
        for model, curve in result["reliability"].items():
            x, y = [c["predicted"] for c in curve], [c["observed"] for c in curve]
            ax.plot(x, y, marker="o", ms=3, label=model)
            top = max(top, *x, *y)
        ax.plot([0, top], [0, top], color="grey", ls=":", lw=1)
        ax.set_title(f"{what}: {source.parent.name}" + (f" (seed {result['seed']})" if "seed" in result else ""))
        ax.set_xlabel("mean calibrated pCTR (decile)")
        ax.set_ylabel("observed CTR")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
