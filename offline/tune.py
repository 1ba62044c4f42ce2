"""Hyper-parameter search on the validation split with Optuna.

    prerank tune --dataset world.toml --model hit --trials 20 --out runs/tune/hit

Each trial trains with sampled optimisation and model settings and reports the validation AUC
after every epoch; Optuna's median pruner stops trials that fall behind the median of earlier
trials at the same epoch, from the fourth epoch on (a slow start is not a bad configuration: with
pruning from the first epoch, 12 of 16 trials of one study stopped after 1-4 epochs). The study
lives in a local SQLite file (`OUT/study.db`): running the same command again resumes it up to
the trial budget. The test split is never read while searching. The best trial is written as

* `OUT/model_config.json`: for `prerank train --model-config OUT/model_config.json`,
* `OUT/train_config.json`: for `prerank train --train-config OUT/train_config.json`,
* `OUT/tune.md` and `OUT/tune.json`: every trial with its parameters, value and state.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from models.features import Kind, Side
from models.layers import match_pairs, pair_fields
from models.provenance import code_version, machine
from models.registry import config_from_dict
from offline.data import Dataset
from offline.train import TrainConfig, rare_id_fields, train

__all__ = [
    "SEARCH_SPACE",
    "TRAIN_KEYS",
    "SearchScope",
    "default_params",
    "droppable_fields",
    "matchable",
    "pairable",
    "run_study",
    "suggest",
    "warm_start_params",
]

log = logging.getLogger(__name__)

#: TrainConfig fields the written train config holds (the epoch cap and the calibrator are left to
#: the run that uses it).
TRAIN_KEYS = tuple(
    f.name
    for f in fields(TrainConfig)
    if f.name not in ("seed", "progress", "device", "eval_batch_size", "epochs", "calibration")
)

#: What a trial samples: name -> (kind, low/choices, high, log). Model keys are used only when the
#: model's config has them. `model.wide`: "rare-ids" sets `linear` and sends the dataset's rare id
#: fields (`rare_id_fields`, the training default) to the linear part only; "none" keeps them in
#: the network.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "lr": ("float", 3e-4, 1e-2, True),
    "batch_size": ("categorical", (256, 512, 1024, 2048)),
    "id_dropout": ("float", 0.0, 0.5, False),
    "embedding_decay": ("float", 1e-3, 30.0, True),
    "lr_decay": ("categorical", (0.3, 1.0)),
    "model.dropout": ("float", 0.0, 0.5, False),
    "model.embedding_dim": ("categorical", (8, 16, 32)),
    "model.head_dim": ("categorical", (16, 32)),
    "model.wide": ("categorical", ("none", "rare-ids")),
    "model.vocab_dot": ("categorical", (False, True)),
    "model.field_dot": ("categorical", (False, True)),
    "model.heads": ("categorical", (1, 2, 4)),
    "model.cross": ("categorical", ("vector", "matrix")),
    "model.temperature": ("float", 1.0, 30.0, True),
    "model.drift": ("categorical", (False, True)),  # per-ad slopes on the kept dense context fields
    "model.match": ("categorical", (False, True)),  # exact ad-id matches in the user's histories
    "model.pairs": ("categorical", (False, True)),  # a weight per (segment-like id, ad-side id) pair
}


def cross_vocabularies(dataset: Dataset) -> tuple[str, ...]:
    """Vocabularies that both towers embed (a user-side history and an ad field of one `vocab`):
    where there are none, `model.vocab_dot` is not searched."""
    schema = dataset.schema
    sides = [{f.vocab for f in fields if f.vocab} for fields in (schema.user_fields, schema.ad_fields)]
    return tuple(sorted(sides[0] & sides[1]))


def matchable(dataset: Dataset) -> bool:
    """Whether an ad-side id field shares its vocabulary with a user-side sequence: where none
    does, `model.match` is not searched."""
    try:
        match_pairs(dataset.schema)
    except ValueError:
        return False
    return True


def pairable(dataset: Dataset) -> bool:
    """Whether a user or context id field is narrow enough to cross with the ad's ids
    (`models.layers.pair_fields`): where none is, `model.pairs` is not searched."""
    try:
        pair_fields(dataset.schema)
    except ValueError:
        return False
    return True


def droppable_fields(dataset: Dataset) -> tuple[str, ...]:
    """The dense context fields (an impression's time, say), each of which a trial keeps or drops
    (`drop.<field>`, the train config's `drop_features`): a continuous value that differs on every
    row, crossed with ids, gives a model rows to memorise, and whether that costs more than the
    field tells is the validation rows' call."""
    return tuple(f.name for f in dataset.schema.features if f.side is Side.CONTEXT and f.kind is Kind.DENSE)


@dataclass(frozen=True)
class SearchScope:
    """What a dataset offers the search, read once per study (`SearchScope.of`): the settings that
    act on something the data may not have are searched only where it has it.

    Args:
        rare_ids: the fields `model.wide` = "rare-ids" sends to the linear part (none: not searched).
        droppable: dense context fields each trial keeps or drops (`drop.<field>`, see
            `droppable_fields`; a `base` drop stays dropped); `model.drift`, for a model with a
            `drift` setting, gives every ad-side id a slope on the kept ones.
        cross_vocab: a vocabulary both towers embed (`model.vocab_dot`).
        matchable: a history shares an ad field's vocabulary (`model.match`).
        pairable: a user or context id field is narrow enough to cross with the ad's ids (`model.pairs`).
    """

    rare_ids: tuple[str, ...] = ()
    droppable: tuple[str, ...] = ()
    cross_vocab: bool = False
    matchable: bool = False
    pairable: bool = False

    @classmethod
    def of(cls, dataset: Dataset) -> SearchScope:
        return cls(
            rare_ids=rare_id_fields(dataset),
            droppable=droppable_fields(dataset),
            cross_vocab=bool(cross_vocabularies(dataset)),
            matchable=matchable(dataset),
            pairable=pairable(dataset),
        )

    def lacks(self, name: str) -> bool:
        """Whether the search parameter `name` acts on something this data does not have."""
        needs = {"model.vocab_dot": self.cross_vocab, "model.match": self.matchable, "model.pairs": self.pairable}
        return not needs.get(name, True)


def suggest(
    trial: Any,
    model: str,
    base: dict[str, Any],
    scope: SearchScope = SearchScope(),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train overrides, model config) sampled for one trial, over `base` (the fixed settings), in
    the parameters of SEARCH_SPACE the model has and `scope` (what the data offers) allows."""
    model_fields = set(asdict(config_from_dict(model, {})))
    train_cfg = dict(base.get("train", {}))
    model_cfg = dict(base.get("model_config", {}))
    for name, spec in SEARCH_SPACE.items():
        target = model_cfg if name.startswith("model.") else train_cfg
        key = name.removeprefix("model.")
        if name.startswith("model.") and key not in model_fields:
            continue
        if scope.lacks(name):
            continue
        if name == "model.drift":  # after the drops: it names the kept fields
            continue
        if name == "model.wide":
            if scope.rare_ids and trial.suggest_categorical(name, list(spec[1])) == "rare-ids":
                model_cfg |= {"linear": True, "wide": list(scope.rare_ids)}
            elif scope.rare_ids:
                model_cfg["wide"] = []
            continue
        if spec[0] == "float":
            target[key] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        else:
            target[key] = trial.suggest_categorical(name, list(spec[1]))
    dropped = list(train_cfg.get("drop_features", ()))
    for field in scope.droppable:
        if field not in dropped and trial.suggest_categorical(f"drop.{field}", [False, True]):
            dropped.append(field)
    if dropped:
        train_cfg["drop_features"] = sorted(dropped)
    if scope.droppable and "drift" in model_fields and trial.suggest_categorical("model.drift", [False, True]):
        kept = [field for field in scope.droppable if field not in dropped]
        if kept:
            model_cfg["drift"] = kept
    return train_cfg, model_cfg


def default_params(model: str, scope: SearchScope = SearchScope()) -> dict[str, Any]:
    """The search space's values of the training defaults (`TrainConfig()` and the model's own
    config, the rare ids in the linear part, every field kept): a new study's first trial, so the config tune writes
    is never one the defaults beat on the validation rows (within the study's epoch cap), and the
    sampler starts from a known-good point. A default outside a float range is clipped to it
    (embedding_decay 0 becomes the range's floor, 1e-3); one outside a categorical is left to the
    sampler."""
    train_defaults = asdict(TrainConfig())
    model_defaults = asdict(config_from_dict(model, {}))
    params: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        key = name.removeprefix("model.")
        if name.startswith("model.") and key not in model_defaults:
            continue
        if scope.lacks(name):
            continue
        if name == "model.drift":
            continue
        if name == "model.wide":
            if scope.rare_ids:
                params[name] = "rare-ids"
            continue
        value = model_defaults[key] if name.startswith("model.") else train_defaults[key]
        if spec[0] == "float":
            params[name] = min(max(float(value), spec[1]), spec[2])
        elif value in spec[1]:
            params[name] = value
    drift = {"model.drift": False} if scope.droppable and "drift" in model_defaults else {}
    return params | {f"drop.{field}": False for field in scope.droppable} | drift


def warm_start_params(previous: dict[str, Any], anchor: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials that carry a previous study's best (its `tune.json`) into a new one whose defaults'
    trial is `anchor`: the best params this study still searches, a parameter the previous study
    did not search at the defaults' value; then, for each such parameter that takes a few values
    (a setting added since, such as `model.drift`), the same trial once per other value."""
    best = {k: v for k, v in previous["best"]["params"].items() if k in anchor}
    added = [k for k in anchor if k not in best]
    first = best | {k: anchor[k] for k in added}
    trials = [first]
    for name in added:
        spec = SEARCH_SPACE.get(name, ("categorical", (False, True)))  # drop.<field>: keep or drop
        if spec[0] == "categorical":
            trials += [first | {name: value} for value in spec[1] if value != anchor[name]]
    return trials


def _objective(
    dataset: Dataset,
    model: str,
    base: dict[str, Any],
    epochs: int,
    seed: int,
    scope: SearchScope,
) -> Callable[[Any], float]:
    import optuna

    def objective(trial: Any) -> float:
        train_cfg, model_cfg = suggest(trial, model, base, scope)
        cfg = TrainConfig(**{**train_cfg, "epochs": epochs, "seed": seed, "progress": False, "calibration": "none"})

        def report(epoch: int, valid_auc: float) -> None:
            trial.report(valid_auc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid AUC {valid_auc:.4f}")

        result = train(dataset, model, model_cfg, cfg, on_epoch=report)
        trial.set_user_attr("best_epoch", result.metrics["best_epoch"])
        trial.set_user_attr("train", {k: v for k, v in asdict(cfg).items() if k in TRAIN_KEYS})
        trial.set_user_attr("model_config", model_cfg)
        return float(result.metrics["valid_auc"])

    return objective


def run_study(
    dataset: Dataset,
    model: str,
    out: Path,
    trials: int,
    seed: int = 0,
    epochs: int = 30,
    base: dict[str, Any] | None = None,
    timeout: float | None = None,
    warm_starts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Runs (or resumes) the study in OUT/study.db until it holds `trials` finished trials.

    A new study's first trial is the training defaults; with `warm_starts` (previous studies'
    `tune.json`s, of this model or of another on the same data: the settings both search carry
    over), the trials of `warm_start_params` for each follow it, in order.
    """
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A heartbeat marks the trials of a killed run as failed when the study resumes (an Optuna
    # feature still flagged experimental; its warning says nothing a user can act on).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}", heartbeat_interval=30, grace_period=90)
    study = optuna.create_study(
        study_name=f"{dataset.name}-{model}",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=4),  # prunes from epoch 4 on
    )
    scope = SearchScope.of(dataset)  # read once, for the defaults' trial and every other
    if not study.trials:  # a new study: the defaults first (default_params), then a previous best
        anchor = default_params(model, scope)
        study.enqueue_trial(anchor)
        for previous in warm_starts:
            for params in warm_start_params(previous, anchor):
                study.enqueue_trial(params, skip_if_exists=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    started = time.perf_counter()
    if done < trials:
        log.info("study %s: %d of %d trials done, running %d", study.study_name, done, trials, trials - done)
        study.optimize(
            _objective(dataset, model, base or {}, epochs, seed, scope),
            n_trials=trials - done,
            timeout=timeout,
            catch=(),
        )
    best = study.best_trial
    model_config = best.user_attrs["model_config"]
    train_config = {k: v for k, v in best.user_attrs["train"].items() if k in TRAIN_KEYS}
    (out / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    (out / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    summary = {
        "dataset": dataset.describe(),
        "model": model,
        "study": study.study_name,
        "seed": seed,
        "epochs_cap": epochs,
        "trials_budget": trials,
        "best": {"number": best.number, "valid_auc": best.value, "params": best.params},
        "warm_starts": [
            {"study": previous.get("study"), "model": previous.get("model"), **previous["best"]}
            for previous in warm_starts
        ],
        "model_config": model_config,
        "train_config": train_config,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "epochs": len(t.intermediate_values),
            }
            for t in study.trials
        ],
        "seconds_this_run": time.perf_counter() - started,
        "code_version": code_version(),
        "machine": machine(),
    }
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "tune.md").write_text(_markdown(summary, out))
    return summary


def _markdown(summary: dict[str, Any], out: Path) -> str:
    names = list(SEARCH_SPACE) + sorted({n for t in summary["trials"] for n in t["params"]} - set(SEARCH_SPACE))
    lines = [
        f"# `prerank tune`: {summary['model']} on {summary['dataset']['dataset']}",
        "",
        f"Study `{summary['study']}` in `study.db`, TPE seed {summary['seed']}, median pruner, "
        f"{summary['trials_budget']} trials, epoch cap {summary['epochs_cap']}; objective: validation AUC "
        "(the test split is not read).",
        "",
        *(
            line
            for warm in summary.get("warm_starts", [])
            for line in (
                f"Warm-started from study `{warm['study']}` ({warm['model']}): its best trial ({warm['number']}, "
                f"validation AUC {warm['valid_auc']:.4f}) ran right after the defaults, with the settings this "
                "study searches, once per value of each setting it did not search.",
                "",
            )
        ),
        f"Best: trial {summary['best']['number']}, validation AUC {summary['best']['valid_auc']:.4f}. Train with:",
        "",
        "```bash",
        f"prerank train --model {summary['model']} --model-config {out / 'model_config.json'} "
        f"--train-config {out / 'train_config.json'} ...",
        "```",
        "",
        "| trial | state | valid AUC | epochs | " + " | ".join(names) + " |",
        "|" + "---|" * (4 + len(names)),
    ]
    for t in summary["trials"]:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        params = [t["params"].get(n) for n in names]
        cells = ["-" if p is None else (f"{p:.4g}" if isinstance(p, float) else str(p)) for p in params]
        lines.append(f"| {t['number']} | {t['state']} | {value} | {t['epochs']} | " + " | ".join(cells) + " |")
    lines += ["", f"Code {summary['code_version']}; machine: {summary['machine']}.", ""]
    return "\n".join(lines)
