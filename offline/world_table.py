"""The worlds table: every model on generated worlds, against their attainable and Bayes AUC.

    prerank worlds --out results/worlds

For each structure a world is generated once into `RUNS/<structure>/data/` (world seed 0), then
each (structure, model, seed) trains with the CLI defaults (what `prerank train` gives a new user,
the calibrator included) into the artifact `RUNS/<structure>/<model>-s<seed>/` (metrics.json with
seeds, data sha256, code version and per-epoch history); runs already there are reused, so an
interrupted table resumes. Then `offline.evaluate` scores each seed's artifacts on the test rows
(calibrated LogLoss, ECE, GAUC) and on simulated candidate sets scored by the world's true click
probability (revenue@10 against the oracle order; consistency: the share of the DCN reference's
top 10 kept in a model's top 100), into `RUNS/<structure>/evaluate-s<seed>.json`. The report
(`OUT/worlds.md`, `worlds.json`, `worlds.png`) gives each model's test AUC (mean ± std over seeds),
its gaps to the attainable and the Bayes AUC of the same test rows, and those business metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.provenance import code_version, machine
from models.registry import MODELS, config_from_dict
from offline.evaluate import plot_reliability
from offline.worlds import HISTORY_POOLING, STRUCTURES, WorldConfig, generate_world
from tools.markdown import splice
from tools.plotting import pyplot

__all__ = ["DEFAULT_MODELS", "run_worlds", "worlds_report"]

log = logging.getLogger(__name__)

#: The pre-rankers and the ranking reference the issue's table asks for.
DEFAULT_MODELS = ("hit", "dssm", "inttower", "fit", "cold", "dcn")


def _world(runs: Path, structure: str, size: dict[str, int], history_pooling: str = HISTORY_POOLING) -> Path:
    data = runs / structure / "data"
    if not (data / "reference.json").exists():
        generate_world(WorldConfig(structure=structure, **size), data, history_pooling=history_pooling)
    return data


def _train_one(schema: str, model: str, seed: int, out: str, train_overrides: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from offline.data import load_dataset
    from offline.train import TrainConfig, train

    dataset = load_dataset(schema)
    overrides = {"calibration": "auto", **train_overrides}  # the CLI's default
    model_config = overrides.pop("model_config", {})
    cfg = TrainConfig(seed=seed, progress=False, **overrides)
    return train(dataset, model, model_config, cfg, Path(out)).metrics


def _evaluate_one(schema: str, artifacts: dict[str, str], out: str, seed: int) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from offline.data import load_dataset
    from offline.evaluate import evaluate_artifacts

    dataset = load_dataset(schema)
    reference = "dcn" if "dcn" in artifacts else None
    paths = {k: Path(v) for k, v in artifacts.items()}
    result = evaluate_artifacts(paths, dataset, reference, n_users=300, n_candidates=1000, k=10, big_k=100, seed=seed)
    result["seed"] = seed
    Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")


def run_worlds(
    runs: Path,
    structures: Sequence[str] = STRUCTURES,
    models: Sequence[str] = DEFAULT_MODELS,
    seeds: Sequence[int] = (1, 2, 3),
    size: dict[str, int] | None = None,
    jobs: int = 2,
    tuned: Path | None = None,
    model_configs: dict[str, dict[str, Any]] | None = None,
    history_pooling: str = HISTORY_POOLING,
) -> None:
    """Generates missing worlds and trains every missing (structure, model, seed), `jobs` at a time.

    `tuned`: a folder holding `prerank tune` outputs as `<structure>-<model>/` (its
    train_config.json and model_config.json); a model without one trains with the defaults.
    `model_configs`: model name -> model config overrides for every world (a tuned model config
    is applied over them). `history_pooling`: the pooling the generated schema files give the
    behaviour history (worlds already under `runs` keep theirs).
    """
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(structures) - set(STRUCTURES))
    if unknown:
        raise ValueError(f"unknown models or structures {unknown}")
    todo = []
    for structure in structures:
        data = _world(runs, structure, size or {}, history_pooling)
        for model in models:
            overrides: dict[str, Any] = {"model_config": dict((model_configs or {}).get(model, {}))}
            study = tuned / f"{structure}-{model}" if tuned is not None else None
            if study is not None and (study / "train_config.json").exists():
                train_cfg = json.loads((study / "train_config.json").read_text())
                overrides |= {k: v for k, v in train_cfg.items() if k not in ("epochs", "calibration", "model_config")}
                overrides["model_config"] |= json.loads((study / "model_config.json").read_text())
            for seed in seeds:
                out = runs / structure / f"{model}-s{seed}"
                if not (out / "metrics.json").exists():
                    todo.append((str(data / f"{structure}.toml"), model, seed, str(out), overrides))
    log.info("%d runs to train", len(todo))
    started = time.perf_counter()
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(_train_one, *job) for job in todo]
        for job, future in zip(todo, futures, strict=True):
            m = future.result()
            log.info("%s: test AUC %.4f (%.0fs elapsed)", job[3], m["test_auc"], time.perf_counter() - started)
        evaluations: list[Future[None]] = []
        for structure in structures:
            schema = str(runs / structure / "data" / f"{structure}.toml")
            for seed in seeds:
                out = runs / structure / f"evaluate-s{seed}.json"
                artifacts = {m: str(runs / structure / f"{m}-s{seed}") for m in models}
                if not out.exists() or set(json.loads(out.read_text())["rows"]) != set(artifacts):
                    evaluations.append(pool.submit(_evaluate_one, schema, artifacts, str(out), seed))
        for done in evaluations:
            done.result()


def worlds_summary(runs: Path) -> list[dict[str, Any]]:
    """One row per (structure, model): mean and std over seeds, gaps to attainable and Bayes."""
    rows = []
    for data in sorted(runs.glob("*/data/reference.json")):
        ref = json.loads(data.read_text())
        structure = ref["structure"]
        groups: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((runs / structure).glob("*-s*/metrics.json")):
            m = json.loads(path.read_text())
            groups.setdefault(m["model"], []).append(m)
        evaluated: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((runs / structure).glob("evaluate-s*.json")):
            for model, row in json.loads(path.read_text())["rows"].items():
                evaluated.setdefault(model, []).append(row)
        for model in [m for m in MODELS if m in groups]:
            ms = groups[model]
            aucs = [m["test_auc"] for m in ms]
            mean = statistics.mean(aucs)
            business = evaluated.get(model, [])

            def avg(key: str, business: list[dict[str, Any]] = business) -> float | None:
                values = [b[key] for b in business if b.get(key) is not None]
                return statistics.mean(values) if values else None

            rows.append(
                {
                    "structure": structure,
                    "model": model,
                    "seeds": sorted(m["seed"] for m in ms),
                    "auc_mean": mean,
                    "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                    "logloss_mean": statistics.mean(m["test_logloss"] for m in ms),
                    "calibrated_logloss": avg("logloss"),
                    "ece": avg("ece"),
                    "gauc": avg("gauc"),
                    "revenue_at_10": avg("revenue_at_k"),
                    "consistency": avg("consistency"),
                    "attainable_auc": ref["attainable"]["auc"],
                    "bayes_auc": ref["bayes"]["auc"],
                    "bayes_logloss": ref["bayes"]["logloss"],
                    "attainable_logloss": ref["attainable"]["logloss"],
                    "gap_to_attainable": mean - ref["attainable"]["auc"],
                    "gap_to_bayes": mean - ref["bayes"]["auc"],
                    "best_epochs": [m["best_epoch"] for m in ms],
                    "epochs": [m["epochs"] for m in ms],
                    "seconds_per_epoch": statistics.mean(m["seconds_per_epoch"] for m in ms),
                    "train_config": {k: v for k, v in ms[0]["train_config"].items() if k not in ("seed", "progress")},
                    "model_config": ms[0]["model_config"],
                    "world": ref["config"],
                    "data_sha256": ref["data_sha256"],
                    "code_versions": sorted({m["code_version"] for m in ms}),
                    "machines": sorted({m.get("machine", "not recorded") for m in ms}),
                }
            )
    if not rows:
        raise FileNotFoundError(f"no world runs under {runs}")
    return rows


def worlds_report(runs: Path, out: Path) -> Path:
    """Writes OUT/worlds.md (the table between markers), worlds.json, worlds.png and copies of the runs."""
    out.mkdir(parents=True, exist_ok=True)
    rows = worlds_summary(runs)
    copies = [(p, f"{p.parent.parent.name}/reference.json") for p in sorted(runs.glob("*/data/reference.json"))]
    copies += [(p, f"{p.parent.parent.name}/{p.parent.name}.json") for p in sorted(runs.glob("*/*-s*/metrics.json"))]
    copies += [(p, f"{p.parent.name}/{p.name}") for p in sorted(runs.glob("*/evaluate-s*.json"))]
    for path, name in copies:
        target = out / "runs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    lines = [
        "| world | Bayes AUC | attainable AUC | model | seeds | test AUC mean ± std | gap to attainable | gap to Bayes "
        "| LogLoss (calibrated) | ECE | GAUC | revenue@10 | consistency | best epochs | s/epoch |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        lines.append(
            f"| {r['structure']} | {r['bayes_auc']:.4f} | {r['attainable_auc']:.4f} | {r['model']} | "
            f"{len(r['seeds'])} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['gap_to_attainable']:+.4f} | "
            f"{r['gap_to_bayes']:+.4f} | {_fmt(r['calibrated_logloss'])} | {_fmt(r['ece'])} | {_fmt(r['gauc'])} | "
            f"{_fmt(r['revenue_at_10'])} | {_fmt(r['consistency'])} | {r['best_epochs']} | "
            f"{r['seconds_per_epoch']:.1f} |"
        )
    worlds = {r["structure"]: r for r in rows}
    codes = sorted({c for r in rows for c in r["code_versions"]})
    lines += ["", "Worlds (generator config and data sha256):", ""]
    lines += [f"* {s}: `{json.dumps(r['world'])}`, sha256 `{r['data_sha256'][:16]}…`" for s, r in worlds.items()]
    lines += ["", "Configs: what each run changed from the CLI's training defaults and the model's defaults:", ""]
    lines += [
        f"* {r['structure']} / {r['model']}: train `{json.dumps(_train_overrides(r))}`, "
        f"model `{json.dumps(_model_overrides(r))}`"
        for r in rows
    ]
    lines += [
        "",
        f"Code {codes}. Machines: {sorted({m for r in rows for m in r['machines']})}; one thread per run.",
    ]
    splice(out / "worlds.md", "worlds-table", "\n".join(lines) + "\n", title="Generated worlds")
    (out / "worlds.json").write_text(
        json.dumps({"rows": rows, "machine": machine(), "code_version": code_version()}, indent=2, default=str) + "\n"
    )
    _plot(rows, out / "worlds.png")
    plot_reliability(sorted(runs.glob("*/evaluate-s1.json")), out / "reliability.png", "world")
    return out / "worlds.md"


def _train_overrides(row: dict[str, Any]) -> dict[str, Any]:
    """The train config keys of `row` that differ from what `prerank train` gives by default."""
    from offline.train import TrainConfig

    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig(calibration="auto")), default=str))
    return {k: v for k, v in row["train_config"].items() if k in defaults and defaults[k] != v}


def _model_overrides(row: dict[str, Any]) -> dict[str, Any]:
    """The model config keys of `row` that differ from the model's defaults."""
    defaults = json.loads(json.dumps(dataclasses.asdict(config_from_dict(row["model"], {}))))
    return {k: v for k, v in row["model_config"].items() if defaults.get(k) != v}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    structures = list(dict.fromkeys(r["structure"] for r in rows))
    fig, axes = plt.subplots(1, len(structures), figsize=(5 * len(structures), 4), squeeze=False)
    for ax, structure in zip(axes[0], structures, strict=True):
        mine = [r for r in rows if r["structure"] == structure]
        x = np.arange(len(mine))
        ax.bar(x, [r["auc_mean"] for r in mine], yerr=[r["auc_std"] for r in mine], color="tab:blue")
        ax.axhline(mine[0]["attainable_auc"], color="tab:green", ls="--", label="attainable")
        ax.axhline(mine[0]["bayes_auc"], color="tab:red", ls=":", label="Bayes")
        ax.set_xticks(x, [r["model"] for r in mine], rotation=30)
        ax.set_ylim(min(r["auc_mean"] for r in mine) - 0.03, mine[0]["bayes_auc"] + 0.01)
        ax.set_title(f"world: {structure}")
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
