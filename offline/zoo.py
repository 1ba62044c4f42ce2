"""The model-zoo accuracy table: every registered model, both MovieLens protocols, several seeds.

    prerank zoo --data-dir DATA/movielens-1m --out results/zoo

Each run trains one (model, protocol, seed) into `RUNS/<protocol>/<model>-s<seed>/` (artifact with
its calibrator + metrics.json with a `cost` block); runs already there are reused, so an
interrupted table resumes. On the evaluated seeds (default: seed 1) the variants train too (HIT
distilled from the DCN ranking reference), and `offline.evaluate` scores every artifact of that
(protocol, seed) on the test split (calibrated LogLoss, ECE, GAUC) and on simulated candidate sets
(revenue@10 against the oracle order, consistency with DCN's top 10 within the top 100), into
`RUNS/<protocol>/evaluate-s<seed>.json`. The report (`OUT/zoo.md`, `zoo.json`, `zoo.png`,
`reliability.png`) gives AUC mean and std, LogLoss, RelaImpr against DSSM, those business metrics,
user-side and per-candidate parameters, stored floats per ad and training seconds per epoch, next to
the best published MovieLens-1M number of each model.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import PrerankModel, Routed
from models.provenance import code_version, machine
from models.registry import MODELS
from offline.data import Dataset, load_dataset
from offline.evaluate import evaluate_artifacts, plot_reliability
from offline.metrics import rela_impr
from offline.published import BEST_PUBLISHED, PUBLISHED_BY_SOURCE
from offline.train import TrainConfig, train
from tools.markdown import splice
from tools.plotting import pyplot

__all__ = ["PUBLISHED", "RECIPES", "VARIANTS", "Recipe", "Variant", "model_cost", "reusable", "run_zoo", "zoo_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the table trains one model: config overrides and optimisation settings."""

    model_config: dict[str, Any]
    batch_size: int = 2048
    lr: float = 1e-3


#: DSSM and DAT train in DSSM's reference configuration (cosine, temperature 1), where batch 256
#: without dropout reproduces the published DSSM number (results/movielens/movielens.md); the rest use the
#: reference scripts' batch 2048 and dropout 0.3.
RECIPES: dict[str, Recipe] = {
    "dssm": Recipe({"dropout": 0.0}, batch_size=256),
    "dat": Recipe({"dropout": 0.0}, batch_size=256),
}


@dataclass(frozen=True)
class Variant:
    """A model trained another way beside its plain runs, on the evaluated seeds: distilled from
    `teacher`'s run of the same protocol and seed (its calibrated pCTR as soft labels)."""

    model: str
    teacher: str
    weight: float = 1.0


VARIANTS: dict[str, Variant] = {"hit-distill": Variant("hit", "dcn")}

#: The ranking-stage model the consistency column compares with.
REFERENCE = "dcn"

#: Best published MovieLens-1M test AUC per model and its source (offline.published).
PUBLISHED = BEST_PUBLISHED


def _count(model: PrerankModel, output: torch.Tensor) -> int:
    """Parameters that `output` depends on (those a backward pass reaches)."""
    model.zero_grad(set_to_none=True)
    output.float().sum().backward()
    total = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return total


def model_cost(model: PrerankModel, dataset: Dataset) -> dict[str, Any]:
    """Serving cost: user-side parameters (run once per request), per-candidate parameters (run
    for every candidate in `score`) and what the index stores per ad."""
    model.eval()
    feats, _ = dataset.test.batch(np.arange(min(64, len(dataset.test))))
    user = model.encode_user(feats)
    ads = model.encode_ad(feats)
    detached = Routed(ads.vectors.detach(), ads.routes) if isinstance(ads, Routed) else ads.detach()
    vectors = detached.vectors if isinstance(detached, Routed) else detached
    return {
        "user_params": _count(model, user),
        "candidate_params": _count(model, model.score(user.detach(), detached)),
        "floats_per_ad": int(vectors[0].numel()),
        "ints_per_ad": 1 if isinstance(ads, Routed) else 0,
        "user_shape": list(user.shape[1:]),
        "precomputes_ads": model.precomputes_ads,
        "stage": model.stage,
    }


def _train_one(
    dataset_name: str,
    data_dir: str | None,
    protocol: str,
    model: str,
    seed: int,
    epochs: int,
    out: str,
    variant: str | None = None,
) -> dict[str, Any]:
    """Trains one run (`model`, or the base model of `variant`) into `out`, with the CLI's default
    calibrator; returns its metrics."""
    previous = _finished(Path(out) / "metrics.json", epochs, calibrated=True)
    if previous is not None:
        return previous  # another `prerank zoo` on the same runs trained it meanwhile
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dataset = load_dataset(dataset_name, protocol, Path(data_dir) if data_dir else None, 1023)
    recipe = RECIPES.get(model, Recipe({}))
    extra: dict[str, Any] = {}
    if variant is not None:
        how = VARIANTS[variant]
        extra = {"distill_from": str(Path(out).parent / f"{how.teacher}-s{seed}"), "distill_weight": how.weight}
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=seed,
        progress=False,
        calibration="auto",
        **extra,
    )
    result = train(dataset, model, recipe.model_config, cfg, Path(out))
    metrics = result.metrics
    metrics["cost"] = model_cost(result.model, dataset)
    if variant is not None:
        metrics["variant"] = variant
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def _evaluate_one(
    dataset_name: str, data_dir: str | None, protocol: str, artifacts: dict[str, str], out: str, seed: int
) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dataset = load_dataset(dataset_name, protocol, Path(data_dir) if data_dir else None, 1023)
    reference = REFERENCE if REFERENCE in artifacts else None
    paths = {k: Path(v) for k, v in artifacts.items()}
    result = evaluate_artifacts(paths, dataset, reference, n_users=1000, n_candidates=1000, k=10, big_k=100, seed=seed)
    result.update(protocol=dataset.protocol, seed=seed, machine=machine(), code_version=code_version())
    Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")


def reusable(metrics: dict[str, Any], epochs: int) -> bool:
    """Whether a finished run is the run an `epochs` cap would train.

    It is when it had the same cap, or when early stopping ended it before its own cap and no later
    than this one: a larger cap would not have changed where it stopped. A run that hit a smaller
    cap is not: it might have gone on improving.
    """
    cap, ran = int(metrics["train_config"]["epochs"]), int(metrics["epochs"])
    return cap == epochs or (ran < cap and ran <= epochs)


def _finished(path: Path, epochs: int, calibrated: bool = False) -> dict[str, Any] | None:
    """The metrics at `path` when that run exists and is `reusable` for this cap (and, with
    `calibrated`, its artifact holds a calibrator), else None."""
    if not path.exists():
        return None
    metrics: dict[str, Any] = json.loads(path.read_text())
    if calibrated and "calibration" not in metrics:
        return None
    return metrics if reusable(metrics, epochs) else None


def _evaluated(paths: Sequence[Path], names: set[str]) -> bool:
    """Whether one of the evaluation files at `paths` has a row for each of `names`."""
    return any(path.exists() and names <= set(json.loads(path.read_text())["rows"]) for path in paths)


def run_zoo(
    data_dir: Path | None,
    runs: Path,
    models: Sequence[str],
    protocols: Sequence[str] = ("paper", "clean"),
    seeds: Sequence[int] = (1, 2, 3),
    epochs: int = 40,
    jobs: int = 2,
    dataset: str = "movielens-1m",
    results: Path | None = None,
    evaluate_seeds: Sequence[int] = (1,),
    variants: Sequence[str] = tuple(VARIANTS),
) -> list[Path]:
    """Trains every missing (protocol, model, seed) run, `jobs` at a time (one thread each), then
    the variants and the evaluations of the evaluated seeds.

    A run is present when `runs/<protocol>/<model>-s<seed>/metrics.json` exists, or its copy in
    `results/runs/` (committed with the report, so a fresh clone resumes the table too), and it
    answers for this epoch cap (`reusable`). An evaluated (protocol, seed) whose evaluation file
    (in either place) lacks one of its runs needs every run's artifact here, with a calibrator:
    those missing are trained again.
    """
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown models or variants {unknown}; choose from {sorted(MODELS)}, {sorted(VARIANTS)}")
    data = str(data_dir) if data_dir else None
    kinds = [v for v in variants if {VARIANTS[v].model, VARIANTS[v].teacher} <= set(models)]
    todo: list[tuple[Any, ...]] = []  # plain runs
    later: list[tuple[Any, ...]] = []  # variants, which distil from the plain runs
    evaluations: list[tuple[Any, ...]] = []
    for protocol in protocols:
        places = [runs / protocol] + ([results / "runs" / protocol] if results is not None else [])
        for seed in seeds:
            evaluated = seed in evaluate_seeds
            names = [*models, *kinds] if evaluated else list(models)
            needs_artifacts = evaluated and not _evaluated([p / f"evaluate-s{seed}.json" for p in places], set(names))
            for name in names:
                out = runs / protocol / f"{name}-s{seed}"
                variant = name if name in VARIANTS else None
                model = VARIANTS[name].model if variant else name
                job = (dataset, data, protocol, model, seed, epochs, str(out), variant)
                if needs_artifacts:
                    missing = _finished(out / "metrics.json", epochs, calibrated=True) is None
                else:
                    found = [out / "metrics.json", *(p / f"{name}-s{seed}.json" for p in places[1:])]
                    missing = all(_finished(path, epochs) is None for path in found)
                if missing:
                    (later if variant else todo).append(job)
            if needs_artifacts:
                artifacts = {name: str(runs / protocol / f"{name}-s{seed}") for name in names}
                target = str(places[0] / f"evaluate-s{seed}.json")
                evaluations.append((dataset, data, protocol, artifacts, target, seed))
    log.info("%d runs to train, %d variants, %d evaluations", len(todo), len(later), len(evaluations))
    started = time.perf_counter()
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        for stage in (todo, later):  # variants distil from the first stage's teachers
            futures = [pool.submit(_train_one, *job) for job in stage]
            for job, future in zip(stage, futures, strict=True):
                m = future.result()
                log.info("%s: test AUC %.4f (%.0fs elapsed)", job[6], m["test_auc"], time.perf_counter() - started)
        for done in [pool.submit(_evaluate_one, *job) for job in evaluations]:
            done.result()
    return sorted(runs.glob("*/*/metrics.json"))


def collect(runs: Path, results: Path) -> list[Path]:
    """Copies each run's metrics.json (without its per-batch bulk) to results/runs/<protocol>/<run>.json."""
    copied = []
    found = [(p, p.parent.parent.name, f"{p.parent.name}.json") for p in sorted(runs.glob("*/*/metrics.json"))]
    found += [(p, p.parent.name, p.name) for p in sorted(runs.glob("*/evaluate-s*.json"))]
    for path, protocol, name in found:
        target = results / "runs" / protocol / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
        copied.append(target)
    return copied


def _load(results_runs: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(results_runs.glob("*/*-s*.json")):
        if path.name.startswith("evaluate-"):
            continue
        m = json.loads(path.read_text())
        groups.setdefault((m["protocol"], m.get("variant", m["model"])), []).append(m)
    if not groups:
        raise FileNotFoundError(f"no runs under {results_runs}")
    return groups


def _evaluations(results_runs: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The evaluation rows under `results_runs` per (protocol, run name), one per evaluated seed."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(results_runs.glob("*/evaluate-s*.json")):
        result = json.loads(path.read_text())
        for name, row in result["rows"].items():
            found.setdefault((result["protocol"], name), []).append({**row, "seed": result["seed"]})
    return found


def zoo_summary(results_runs: Path) -> list[dict[str, Any]]:
    """One row per (protocol, model or variant) of the runs under `results_runs`: means over seeds,
    cost, and the business metrics of the evaluated seeds."""
    groups = _load(results_runs)
    evaluations = _evaluations(results_runs)
    order = [m for m in [*MODELS, *VARIANTS] if any(k[1] == m for k in groups)]
    rows = []
    found = {k[0] for k in groups}
    for protocol in [p for p in ("paper", "clean") if p in found] + sorted(found - {"paper", "clean"}):
        base = groups.get((protocol, "dssm"))
        base_auc = statistics.mean(m["test_auc"] for m in base) if base else None
        for model in order:
            ms = groups.get((protocol, model))
            if not ms:
                continue
            aucs = [m["test_auc"] for m in ms]
            mean = statistics.mean(aucs)
            published = PUBLISHED.get(model) if protocol == "paper" else None
            cost = ms[0].get("cost", {})
            business = evaluations.get((protocol, model), [])

            def avg(key: str, business: list[dict[str, Any]] = business) -> float | None:
                values = [b[key] for b in business if b.get(key) is not None]
                return statistics.mean(values) if values else None

            rows.append(
                {
                    "protocol": protocol,
                    "model": model,
                    "stage": cost.get("stage", "prerank"),
                    "seeds": sorted(m["seed"] for m in ms),
                    "auc_mean": mean,
                    "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                    "logloss_mean": statistics.mean(m["test_logloss"] for m in ms),
                    "rela_impr_pct": rela_impr(mean, base_auc) if base_auc else None,
                    "published_auc": published[0] if published else None,
                    "published_source": published[1] if published else None,
                    "gap_to_published": mean - published[0] if published else None,
                    "evaluated_seeds": sorted(b["seed"] for b in business),
                    "calibrated_logloss": avg("logloss"),
                    "ece": avg("ece"),
                    "gauc": avg("gauc"),
                    "revenue_at_10": avg("revenue_at_k"),
                    "consistency": avg("consistency"),
                    "distilled_from": VARIANTS[model].teacher if model in VARIANTS else None,
                    "best_epochs": [m["best_epoch"] for m in ms],
                    # median epoch of each run (robust to an epoch slowed by other work), mean over seeds
                    "seconds_per_epoch": statistics.mean(
                        statistics.median(h["train_seconds"] for h in m["history"]) for m in ms
                    ),
                    **{k: cost.get(k) for k in ("user_params", "candidate_params", "floats_per_ad", "ints_per_ad")},
                    "code_versions": sorted({m["code_version"] for m in ms}),
                    "machines": sorted({m.get("machine", "not recorded") for m in ms}),
                    "data_sha256": ms[0]["data_sha256"],
                }
            )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def zoo_report(runs: Path, out: Path) -> Path:
    """Collects the runs' metrics and evaluations into OUT/runs/, writes OUT/zoo.md, zoo.json, zoo.png
    and reliability.png; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    collect(runs, out)
    rows = zoo_summary(out / "runs")
    header = (
        "| protocol | model | stage | seeds | test AUC mean ± std | LogLoss | RelaImpr vs DSSM | published best "
        "(source) | gap | LogLoss (calibrated) | ECE (calibrated) | GAUC | revenue@10 | consistency with DCN "
        "| best epochs | s/epoch | user-side params | per-candidate params | stored per ad |"
    )
    lines = [header, "|" + "---|" * 19]
    for r in rows:
        stored = f"{r['floats_per_ad']} floats" + (" + 1 int" if r["ints_per_ad"] else "")
        pub = f"{r['published_auc']:.4f} ({r['published_source']})" if r["published_auc"] else "-"
        lines.append(
            f"| {r['protocol']} | {r['model']} | {r['stage']} | {len(r['seeds'])} | "
            f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.4f} | "
            f"{_fmt(r['rela_impr_pct'], '+.2f')}% | {pub} | {_fmt(r['gap_to_published'], '+.4f')} | "
            f"{_fmt(r['calibrated_logloss'], '.4f')} | {_fmt(r['ece'], '.4f')} | {_fmt(r['gauc'], '.4f')} | "
            f"{_fmt(r['revenue_at_10'], '.4f')} | "
            f"{_fmt(r['consistency'], '.4f')} | {r['best_epochs']} | {r['seconds_per_epoch']:.0f} | "
            f"{r['user_params']:,} | {r['candidate_params']:,} | {stored} |"
        )
    evaluated = sorted({s for r in rows for s in r["evaluated_seeds"]})
    sets = {
        (e["clicks"], e["bids"], e["n_users"], e["n_candidates"])
        for e in map(json.loads, map(Path.read_text, sorted((out / "runs").glob("*/evaluate-s*.json"))))
    }
    lines += [
        "",
        f"ECE, GAUC, revenue@10 and consistency: seed{'s' if len(evaluated) > 1 else ''} "
        f"{', '.join(map(str, evaluated)) or '-'} (`offline.evaluate`), with the calibrator each artifact "
        "carries (chosen by validation LogLoss), as is the calibrated LogLoss. Candidate sets "
        "(users x candidates; clicks; bids): "
        + "; ".join(f"{u:,} x {n:,}; {c}; {b}" for c, b, u, n in sorted(sets))
        + ". On logged data each user's candidates are its test-split ads, filled up with ads it has no "
        "test row for. revenue@10 is bid x click of the top 10 by eCPM over that of the oracle order; "
        "consistency is the share of DCN's top 10 kept in the model's top 100."
        + "".join(
            f" `{name}`: {VARIANTS[name].model} distilled from {VARIANTS[name].teacher} (soft-label weight "
            f"{VARIANTS[name].weight}), on the evaluated seeds."
            for name in VARIANTS
            if any(r["model"] == name for r in rows)
        ),
    ]
    lines += [
        "",
        "Published MovieLens-1M test AUC (MODELS.md §10.1; the HIT paper reuses the IntTower rows):",
        "",
        "| model | IntTower paper | HIT paper | FIT slides |",
        "|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] in MODELS):
        by_source = PUBLISHED_BY_SOURCE.get(model, (None, None, None))
        lines.append(f"| {model} | " + " | ".join(_fmt(v, ".4f") for v in by_source) + " |")
    codes = sorted({c for r in rows for c in r["code_versions"]})
    lines += [
        "",
        f"Data: sha256 `{rows[0]['data_sha256'][:16]}…`, split seed 1023. Code {codes}.",
        f"Machines (as each run recorded it): {sorted({m for r in rows for m in r['machines']})}; one thread per run.",
        f"Report written on: {machine()}.",
    ]
    table = "\n".join(lines) + "\n"
    md = out / "zoo.md"
    splice(md, "zoo-table", table, title="Model zoo on MovieLens-1M")
    (out / "zoo.json").write_text(
        json.dumps({"rows": rows, "machine": machine(), "code_version": code_version()}, indent=2) + "\n"
    )
    _plot(rows, out / "zoo.png")
    plot_reliability(sorted((out / "runs").glob("*/evaluate-s1.json")), out / "reliability.png", "MovieLens-1M")
    return md


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        mine = [r for r in rows if r["protocol"] == protocol]
        x = np.arange(len(mine))
        ax.bar(x, [r["auc_mean"] for r in mine], yerr=[r["auc_std"] for r in mine], color="tab:blue", label="measured")
        pub = [(i, r["published_auc"]) for i, r in enumerate(mine) if r["published_auc"]]
        if pub:
            ax.scatter(*zip(*pub, strict=True), color="tab:red", marker="_", s=400, zorder=3, label="best published")
        ax.set_xticks(x, [r["model"] for r in mine], rotation=30)
        low = min(r["auc_mean"] for r in mine)
        ax.set_ylim(low - 0.03, max(0.93, max(r["auc_mean"] for r in mine) + 0.01))
        ax.set_title(f"MovieLens-1M, {protocol} protocol (mean ± std over seeds)")
        ax.set_ylabel("test AUC")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
