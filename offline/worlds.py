"""Impression logs whose click probability is known: the yardstick for accuracy claims.

A world is a parametric click model: the logit of a row is a known function of the row's observed
fields (user, segment, age, behaviour history, position, ad, category, advertiser, price) and of
parameters drawn from known priors, some of them one per user or per ad. Rows draw their user and
ad from long-tailed (Zipf) activity, so many ids have only a few rows. `generate_world` writes the
log (Parquet or CSV) with a schema file, and `reference.json` with two numbers for the test rows:

* the **Bayes** AUC / LogLoss: the true probabilities as the prediction (no learner beats it);
* the **attainable** AUC / LogLoss: the true functional form fitted on the training rows only
  (the same module, its parameters re-initialised and fitted by MAP under the true priors, early
  stopping on the validation rows). With few rows per id the Bayes AUC is out of any learner's
  reach; this is what knowing the structure buys.

Structures (`STRUCTURES`):

* ``maxsim``: multi-interest users (K interest vectors: a segment prototype plus a per-user
  residual) scored by MaxSim against the ad's vector (category prototype plus per-ad residual),
  plus ad quality and a position effect. HIT's own assumption.
* ``cross``: user x ad crosses: segment x category and age x advertiser tables, a per-segment price
  sensitivity, per-user and per-ad biases, position.
* ``sequence``: sequence-driven interest: a recency-weighted match of the ad's category against the
  user's behaviour history (newest counts most), a small segment x category table, ad quality that
  drifts over the log's time span, position.

The split is `offline.data.tabular`'s: rows are written in time order, the latest 20% are the
test rows and 1/8 of the rest (seeded) are the validation rows, exactly as `prerank train
--dataset world.toml` reads them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.features import POOLINGS
from models.provenance import code_version, machine
from offline.data.dataset import files_sha256
from offline.data.tabular import split_rows
from offline.metrics import auc, logloss

__all__ = [
    "HISTORY_POOLING",
    "STRUCTURES",
    "WorldConfig",
    "attach_oracle",
    "fit_attainable",
    "generate_world",
    "world_logits",
]

log = logging.getLogger(__name__)

STRUCTURES = ("maxsim", "cross", "sequence")
SEGMENTS, AGES, CATEGORIES, ADVERTISERS, POSITIONS, HISTORY = 16, 6, 40, 300, 5, 20
WIDE = 10.0  # prior std of scalar parameters with no real prior (biases, scales)
FORMATS = ("parquet", "csv")
#: The pooling the generated schema files give the time-ordered behaviour history.
HISTORY_POOLING = "recency"


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a world.

    Args:
        structure: one of STRUCTURES.
        users, ads, rows: entity and impression counts.
        seed: seeds every draw; the same config always gives the same bytes.
        zipf: exponent of the long tail of user and ad activity (0: uniform).
        split_seed: the split seed the reference numbers are computed for (`--split-seed`).
    """

    structure: str = "maxsim"
    users: int = 20_000
    ads: int = 4_000
    rows: int = 200_000
    seed: int = 0
    zipf: float = 1.0
    split_seed: int = 1023

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if min(self.users, self.ads) < 2 or self.rows < 100:
            raise ValueError("a world needs at least 2 users, 2 ads and 100 rows")
        if self.zipf < 0:
            raise ValueError(f"zipf must be >= 0, got {self.zipf}")


# --------------------------------------------------------------------------------------------
# The click models. Each is an nn.Module whose parameters carry their prior std; the generator
# draws them from the prior, the attainable learner fits a fresh copy by MAP.


class _ClickModel(nn.Module):
    """Logit of a batch of rows (a dict of tensors) from parameters with known normal priors."""

    def __init__(self, users: int, ads: int) -> None:
        super().__init__()
        self.w = nn.ParameterDict()
        self.priors: dict[str, float] = {}

    def param(self, name: str, shape: tuple[int, ...], std: float) -> None:
        self.w[name] = nn.Parameter(torch.zeros(shape))
        self.priors[name] = std

    def draw(self, generator: torch.Generator, fixed: dict[str, torch.Tensor]) -> None:
        """Sets every parameter to a draw from its prior, or to the given fixed value."""
        with torch.no_grad():
            for name, p in self.w.items():
                if name in fixed:
                    p.copy_(fixed[name])
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * self.priors[name])

    def init_for_fit(self, generator: torch.Generator) -> None:
        """Small random values (a learner's start: symmetric zeros would not break MaxSim ties)."""
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)

    def penalty(self) -> torch.Tensor:
        """Negative log prior (up to a constant): sum ||theta||^2 / (2 sigma^2)."""
        return sum((p.pow(2).sum() / (2 * self.priors[n] ** 2) for n, p in self.w.items()), torch.zeros(()))

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class _MaxSim(_ClickModel):
    K, D = 3, 8

    def __init__(self, users: int, ads: int) -> None:
        super().__init__(users, ads)
        self.param("prototype", (SEGMENTS, self.K, self.D), 0.45)
        self.param("user_residual", (users, self.K, self.D), 0.3)
        self.param("category_vector", (CATEGORIES, self.D), 0.45)
        self.param("ad_residual", (ads, self.D), 0.3)
        self.param("ad_quality", (ads,), 0.5)
        self.param("position", (POSITIONS,), WIDE)
        self.param("scale", (1,), WIDE)
        self.param("bias", (1,), WIDE)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.w
        interests = w["prototype"][b["segment"]] + w["user_residual"][b["user"]]  # (B, K, D)
        ad = w["category_vector"][b["category"]] + w["ad_residual"][b["ad"]]  # (B, D)
        maxsim = torch.einsum("bkd,bd->bk", interests, ad).max(-1).values
        return w["scale"] * maxsim + w["ad_quality"][b["ad"]] + w["position"][b["position"]] + w["bias"]


class _Cross(_ClickModel):
    def __init__(self, users: int, ads: int) -> None:
        super().__init__(users, ads)
        self.param("segment_category", (SEGMENTS, CATEGORIES), 0.8)
        self.param("age_advertiser", (AGES, ADVERTISERS), 0.5)
        self.param("price_sensitivity", (SEGMENTS,), 0.5)
        self.param("user_bias", (users,), 0.4)
        self.param("ad_bias", (ads,), 0.5)
        self.param("position", (POSITIONS,), WIDE)
        self.param("bias", (1,), WIDE)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.w
        return (
            w["segment_category"][b["segment"], b["category"]]
            + w["age_advertiser"][b["age"], b["advertiser"]]
            + w["price_sensitivity"][b["segment"]] * b["price_z"]
            + w["user_bias"][b["user"]]
            + w["ad_bias"][b["ad"]]
            + w["position"][b["position"]]
            + w["bias"]
        )


class _Sequence(_ClickModel):
    def __init__(self, users: int, ads: int) -> None:
        super().__init__(users, ads)
        self.param("recency", (HISTORY,), WIDE)  # weight of a match at each position, newest first
        self.param("segment_category", (SEGMENTS, CATEGORIES), 0.3)
        self.param("ad_quality", (ads,), 0.5)
        self.param("ad_drift", (ads,), 1.0)  # quality change from the log's start to its end
        self.param("position", (POSITIONS,), WIDE)
        self.param("bias", (1,), WIDE)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.w
        newest_first = b["history"].flip(-1)  # (B, L): the file lists the oldest first
        matches = (newest_first == b["category"].unsqueeze(-1)).float()
        return (
            matches @ w["recency"]
            + w["segment_category"][b["segment"], b["category"]]
            + w["ad_quality"][b["ad"]]
            + w["ad_drift"][b["ad"]] * (b["time"] - 0.5)
            + w["position"][b["position"]]
            + w["bias"]
        )


_MODELS: dict[str, type[_ClickModel]] = {"maxsim": _MaxSim, "cross": _Cross, "sequence": _Sequence}


def _fixed(structure: str) -> dict[str, torch.Tensor]:
    """The parameters each world sets instead of drawing (base rate, position and scale effects)."""
    fixed = {"position": torch.tensor([0.0, -0.25, -0.5, -0.7, -0.9])}
    if structure == "maxsim":
        fixed |= {"scale": torch.tensor([1.2]), "bias": torch.tensor([-2.6])}
    elif structure == "cross":
        fixed |= {"bias": torch.tensor([-1.9])}
    else:
        fixed |= {"recency": 2.5 * torch.exp(-torch.arange(HISTORY) / 4.0), "bias": torch.tensor([-2.3])}
    return fixed


# --------------------------------------------------------------------------------------------
# Entities and rows.


@dataclass
class _World:
    config: WorldConfig
    frame: pd.DataFrame  # the log, in time order
    batch: dict[str, torch.Tensor]  # the model inputs of every row
    truth: _ClickModel
    probability: np.ndarray


def _zipf_choice(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    ranks = rng.choice(n, size=size, p=weights / weights.sum())
    return rng.permutation(n)[ranks]  # which ids are the heavy ones is itself random


def _build(config: WorldConfig) -> _World:
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    n_users, n_ads, n_rows = config.users, config.ads, config.rows
    segment = rng.integers(0, SEGMENTS, n_users)
    age = rng.integers(0, AGES, n_users)
    taste = rng.normal(0, 1.5, (SEGMENTS, CATEGORIES))[segment] + rng.normal(0, 1.0, (n_users, CATEGORIES))
    taste = np.exp(taste - taste.max(1, keepdims=True))
    cdf = np.cumsum(taste / taste.sum(1, keepdims=True), 1)
    history = (rng.random((n_users, HISTORY, 1)) > cdf[:, None, :]).sum(-1).clip(0, CATEGORIES - 1)
    category = rng.integers(0, CATEGORIES, n_ads)
    advertiser = rng.integers(0, ADVERTISERS, n_ads)
    price = np.round(rng.lognormal(3.0, 0.8, n_ads), 2)
    bid = np.round(rng.lognormal(0.0, 0.5, n_ads), 4)

    user = _zipf_choice(rng, n_users, n_rows, config.zipf)
    ad = _zipf_choice(rng, n_ads, n_rows, config.zipf)
    position = rng.integers(0, POSITIONS, n_rows)
    ts = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86_400, n_rows))
    log_price = np.log(price)
    batch = {
        "user": torch.from_numpy(user),
        "segment": torch.from_numpy(segment[user]),
        "age": torch.from_numpy(age[user]),
        "history": torch.from_numpy(history[user]),
        "ad": torch.from_numpy(ad),
        "category": torch.from_numpy(category[ad]),
        "advertiser": torch.from_numpy(advertiser[ad]),
        "price_z": torch.from_numpy(((log_price - log_price.mean()) / log_price.std())[ad]).float(),
        "position": torch.from_numpy(position),
        "time": torch.from_numpy((ts - ts[0]) / max(ts[-1] - ts[0], 1)).float(),
    }
    truth = _MODELS[config.structure](n_users, n_ads)
    truth.draw(generator, _fixed(config.structure))
    with torch.no_grad():
        probability = torch.sigmoid(truth(batch)).double().numpy()
    click = (rng.random(n_rows) < probability).astype(np.int8)
    frame = pd.DataFrame(
        {
            "ts": ts,
            "user_id": user,
            "segment": segment[user],
            "age": age[user],
            "history": ["|".join(map(str, h)) for h in history[user]],
            "position": position + 1,
            "ad_id": ad,
            "category": category[ad],
            "advertiser": advertiser[ad],
            "price": price[ad],
            "bid": bid[ad],
            "click": click,
        }
    )
    return _World(config, frame, batch, truth, probability)


def world_logits(model: _ClickModel, batch: dict[str, torch.Tensor], rows: np.ndarray) -> torch.Tensor:
    return model({k: v[rows] for k, v in batch.items()})


#: Which model inputs belong to the user side (with the row's context and time) and the ad side.
USER_INPUTS = ("user", "segment", "age", "history", "position", "time")
AD_INPUTS = ("ad", "category", "advertiser", "price_z")


def attach_oracle(dataset: Any, reference: Path) -> None:
    """Gives a world loaded through its schema its true click probability (`Dataset.oracle`).

    The world is rebuilt from the config in reference.json (generation is deterministic; the data
    checksum is checked). oracle(user rows, ad rows) pairs the user side of each user-table row's
    source log row (its fields, context and time) with the ad side of each ad-table row's.
    """
    ref = json.loads(Path(reference).read_text())
    if dataset.user_source_rows is None or dataset.ad_source_rows is None:
        raise ValueError("the dataset does not record its source rows")
    if dataset.checksum != ref["data_sha256"]:
        raise ValueError(f"{reference}: data sha256 differs from the log's (regenerate the world)")
    world = _build(WorldConfig(**ref["config"]))
    user_src, ad_src = dataset.user_source_rows, dataset.ad_source_rows

    def oracle(user_rows: np.ndarray, ad_rows: np.ndarray) -> np.ndarray:
        u, a = torch.from_numpy(user_src[user_rows]), torch.from_numpy(ad_src[ad_rows])
        batch = {k: world.batch[k][u] for k in USER_INPUTS} | {k: world.batch[k][a] for k in AD_INPUTS}
        with torch.no_grad():
            return torch.sigmoid(world.truth(batch)).double().numpy()

    dataset.oracle = oracle


# --------------------------------------------------------------------------------------------
# The attainable learner.


def fit_attainable(
    world: _World, train: np.ndarray, valid: np.ndarray, seed: int = 0, epochs: int = 40, batch_size: int = 4096
) -> tuple[_ClickModel, dict[str, Any]]:
    """The true functional form fitted by MAP under the true priors on `train`, early-stopped on `valid`."""
    labels = torch.from_numpy(world.frame["click"].to_numpy(np.float32))
    generator = torch.Generator().manual_seed(seed)
    model = _MODELS[world.config.structure](world.config.users, world.config.ads)
    model.init_for_fit(generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    rng = np.random.default_rng(seed)
    best, best_state, best_epoch, bad = math.inf, None, 0, 0
    started = time.perf_counter()
    n = len(train)
    for epoch in range(1, epochs + 1):
        model.train()
        order = train[rng.permutation(n)]
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(world_logits(model, world.batch, rows), labels[rows])
            loss = loss + model.penalty() / n  # MAP: the prior once per pass over the training rows
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            model.eval()
            valid_loss = float(
                F.binary_cross_entropy_with_logits(world_logits(model, world.batch, valid), labels[valid])
            )
        if valid_loss < best - 1e-5:
            best, best_epoch, bad = valid_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= 3:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, {
        "best_epoch": best_epoch,
        "epochs": epoch,
        "valid_logloss": best,
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# Writing a world.


def _schema_toml(config: WorldConfig, file_name: str, history_pooling: str = HISTORY_POOLING) -> str:
    return f"""# A generated world ({config.structure}): clicks from a known function; see reference.json.
# prerank train --dataset {config.structure}.toml --out ARTIFACT
name = "world-{config.structure}"
files = ["{file_name}"]
user_key = "user_id"
ad_key = "ad_id"
label = "click"
timestamp = "ts"
bid = "bid"

[[features]]
column = "user_id"
side = "user"
kind = "sparse"

[[features]]
column = "segment"
side = "user"
kind = "sparse"
static = true

[[features]]
column = "age"
side = "user"
kind = "sparse"
static = true

[[features]]
column = "history"      # the user's last {HISTORY} clicked categories, oldest first
side = "user"
kind = "sequence"
vocab = "category"      # one embedding table with the ad's category
pooling = "{history_pooling}"
max_len = {HISTORY}

[[features]]
column = "position"
side = "context"
kind = "sparse"

[[features]]
column = "ts"           # the impression's time, as the timestamp key: a click model may drift with it
side = "context"
kind = "dense"
normalize = true

[[features]]
column = "ad_id"
side = "ad"
kind = "sparse"

[[features]]
column = "category"
side = "ad"
kind = "sparse"
static = true
vocab = "category"

[[features]]
column = "advertiser"
side = "ad"
kind = "sparse"
static = true

[[features]]
column = "price"
side = "ad"
kind = "dense"
normalize = true
"""


def _scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}


def generate_world(
    config: WorldConfig, out: Path, file_format: str = "parquet", history_pooling: str = HISTORY_POOLING
) -> dict[str, Any]:
    """Writes `out/<structure>.toml`, the log and `out/reference.json`; returns the reference.

    The schema file declares every column the click model reads, the impression time included
    (a dense context field beside the timestamp key), so the reference's learner reads nothing a
    model is denied. `history_pooling`: how the schema file pools the behaviour history (default
    "recency", one learned weight per position back from the newest id, as the README advises for
    a time-ordered history); the log and the reference do not depend on it.
    """
    if file_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {file_format!r}")
    if history_pooling not in POOLINGS:
        raise ValueError(f"history pooling must be one of {POOLINGS}, got {history_pooling!r}")
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    world = _build(config)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"impressions.{file_format}"
    if file_format == "parquet":
        world.frame.to_parquet(data, index=False)
    else:
        world.frame.to_csv(data, index=False)
    (out / f"{config.structure}.toml").write_text(_schema_toml(config, data.name, history_pooling))
    generated = time.perf_counter() - started

    train, valid, test = split_rows(config.rows, True, config.split_seed)
    labels = world.frame["click"].to_numpy(np.float64)
    fitted, fit_info = fit_attainable(world, train, valid, seed=config.seed)
    with torch.no_grad():
        attainable = torch.sigmoid(world_logits(fitted, world.batch, test)).double().numpy()
    rows_per_user = np.bincount(world.frame["user_id"].to_numpy()[train], minlength=config.users)
    rows_per_ad = np.bincount(world.frame["ad_id"].to_numpy()[train], minlength=config.ads)
    reference: dict[str, Any] = {
        "structure": config.structure,
        "config": asdict(config),
        "schema_file": f"{config.structure}.toml",
        "data_file": data.name,
        "data_sha256": files_sha256([data]),
        "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
        "positive_rate": {"train": float(labels[train].mean()), "test": float(labels[test].mean())},
        "rows_per_id": {
            "users_with_at_most_2_train_rows": float((rows_per_user <= 2).mean()),
            "ads_with_at_most_2_train_rows": float((rows_per_ad <= 2).mean()),
            "median_train_rows_per_user": float(np.median(rows_per_user)),
            "median_train_rows_per_ad": float(np.median(rows_per_ad)),
        },
        "bayes": _scores(labels[test], world.probability[test]),
        "attainable": {**_scores(labels[test], attainable), **fit_info},
        "generate_seconds": generated,
        "code_version": code_version(),
        "machine": machine(),
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    log.info(
        "%s: Bayes AUC %.4f, attainable %.4f -> %s",
        config.structure,
        reference["bayes"]["auc"],
        reference["attainable"]["auc"],
        out,
    )
    return reference
