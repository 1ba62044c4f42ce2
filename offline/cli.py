"""The `prerank` command line: train, export, serve, demo and data download."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

#: MovieLens protocols (offline.data.movielens.PROTOCOLS; repeated so `--help` needs no pandas).
PROTOCOLS = ("paper", "clean", "paper-neutral")

__all__ = ["main"]

log = logging.getLogger("prerank")


class CliError(Exception):
    """A user error reported as one line with exit status 2."""


def _json_arg(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="movielens-1m, synthetic (default; demo: MovieLens when found), synthetic:N_ADS or a schema file "
        "(.toml/.json)",
    )
    p.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="MovieLens protocol")
    p.add_argument(
        "--data-dir", type=Path, help="dataset folder (default: $PRERANK_DATA_DIR/<dataset>; schema file: its folder)"
    )
    p.add_argument("--split-seed", type=int, default=1023, help="seed of the 80/20 split (reference: 1023)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prerank", description="HIT pre-ranking: train, export, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="kernel benchmark of the scoring path (see: prerank bench --help)", add_help=False)
    sub.add_parser("retrieval-recall", help="FAISS recall@K against brute force", add_help=False)

    p = sub.add_parser("train", help="train a model and write an artifact directory")
    _add_data_args(p)
    p.add_argument(
        "--model", default="hit", help="registered model (hit, dssm, dat, inttower, fit, cold, lr, deepfm, dcn)"
    )
    p.add_argument("--model-config", type=_json_arg, default={}, help="JSON overrides, e.g. '{\"heads\": 4}'")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--seed", type=int, default=42, help="model init and batch-order seed")
    p.add_argument("--baseline", type=Path, help="a DSSM run's artifact or metrics.json, for RelaImpr")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")
    p.add_argument("--drop-features", nargs="+", default=[], help="leave these fields out (ablations)")

    p = sub.add_parser("zoo", help="train every model on MovieLens-1M (both protocols, several seeds) and report")
    p.add_argument("--data-dir", type=Path, help="MovieLens folder (default: $PRERANK_DATA_DIR/movielens-1m)")
    p.add_argument("--dataset", default="movielens-1m", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", help="default: every registered model")
    p.add_argument("--protocols", nargs="+", default=["paper", "clean"], choices=PROTOCOLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="maximum epochs per run (early stopping, patience 2; runs that hit a smaller cap are retrained)",
    )
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel, one thread each")
    p.add_argument("--runs", type=Path, default=Path("runs/zoo"), help="run directories (existing runs are reused)")
    p.add_argument("--out", type=Path, default=Path("results/zoo"), help="where zoo.md/json/png go")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from existing runs")

    p = sub.add_parser("export", help="run the ad tower over every ad and publish an index version")
    p.add_argument("artifact", type=Path, help="model artifact directory")
    _add_data_args(p)
    p.add_argument("--store", required=True, help="local:DIR or redis://[:password@]host:port/db (rediss:// for TLS)")
    p.add_argument("--keep", type=int, default=5, help="published versions to keep")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"], help="stored vector type")

    p = sub.add_parser("quant-auc", help="test AUC with ad vectors stored as fp32, bf16 and int8")
    p.add_argument("artifact", type=Path)
    _add_data_args(p)
    p.add_argument("--out", type=Path, help="write the JSON result here")

    p = sub.add_parser("versions", help="list the published versions of a store")
    p.add_argument("--store", required=True, help="local:DIR or redis://...")

    p = sub.add_parser("rollback", help="point the store's live version at an earlier version")
    p.add_argument("version", help="e.g. v000003")
    p.add_argument("--store", required=True, help="local:DIR or redis://...")

    p = sub.add_parser("serve", help="start the HTTP service")
    p.add_argument("artifact", type=Path, nargs="?", help="optional: must match the store's live model")
    p.add_argument("--store", required=True, help="local:DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu or cuda (default: PRERANK_DEVICE or cpu)")
    p.add_argument("--workers", type=int, default=1, help="server processes (metrics aggregate across them)")

    p = sub.add_parser("demo", help="train HIT, export, serve and send sample requests")
    _add_data_args(p)
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where artifacts and the store go")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 on MovieLens, 8 on synthetic")
    p.add_argument("--port", type=int, default=8000)

    p = sub.add_parser("download-movielens", help="download the official ml-1m.zip (needs a network)")
    p.add_argument("--data-dir", type=Path, required=True)
    return parser


def _train(args: argparse.Namespace) -> None:
    from offline.data import load_dataset
    from offline.train import TrainConfig, load_baseline, train

    baseline = load_baseline(args.baseline) if args.baseline else None
    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    if args.drop_features:
        dataset = dataset.without(args.drop_features)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
    )
    result = train(dataset, args.model, args.model_config, cfg, args.out, baseline)
    if result.artifact is None:  # a non-zero torchrun rank: rank 0 reports
        return
    m = result.metrics
    line = f"{args.model} test AUC {m['test_auc']:.4f} LogLoss {m['test_logloss']:.4f}"
    if "rela_impr_pct" in m:
        line += f" RelaImpr {m['rela_impr_pct']:+.2f}%"
    print(f"{line}  ({m['epochs']} epochs, {m['wall_seconds']:.0f}s) -> {args.out}")


def _export(args: argparse.Namespace) -> None:
    from offline.data import load_dataset
    from offline.export import export

    dataset = load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed)
    manifest = export(args.artifact, dataset, args.store, args.dtype, args.keep)
    print(f"published index {manifest['version']} ({manifest['n_ads']} ads, {manifest['dtype']}) to {args.store}")


def _zoo(args: argparse.Namespace) -> None:
    from models.registry import MODELS
    from offline.zoo import run_zoo, zoo_report

    if not args.report_only:
        models = args.models or list(MODELS)
        run_zoo(
            args.data_dir, args.runs, models, args.protocols, args.seeds, args.epochs, args.jobs, args.dataset, args.out
        )
    print(f"wrote {zoo_report(args.runs, args.out)}")


def _quant_auc(args: argparse.Namespace) -> None:
    from offline.data import load_dataset
    from offline.quant import quantized_auc

    result = quantized_auc(args.artifact, load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed))
    for dtype, m in result["dtypes"].items():
        print(f"{dtype:9s} test AUC {m['auc']:.5f}  LogLoss {m['logloss']:.5f}  AUC change {m['auc_change']:+.5f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _versions(args: argparse.Namespace) -> None:
    from offline.publish import open_publisher

    publisher = open_publisher(args.store)
    live = publisher.current()
    for m in publisher.versions():
        mark = "*" if m.get("version") == live else " "
        fields = (m.get("version"), m.get("model_version"), f"{m.get('n_ads')} ads", m.get("dtype"), m.get("created"))
        print(mark, "  ".join(str(f) for f in fields))


def _rollback(args: argparse.Namespace) -> None:
    from offline.publish import open_publisher

    open_publisher(args.store).rollback(args.version)
    print(f"live version is now {args.version}")


def _serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    os.environ["PRERANK_STORE"] = args.store
    if args.artifact is not None:
        os.environ["PRERANK_ARTIFACT"] = str(args.artifact)
    if args.device:
        os.environ["PRERANK_DEVICE"] = args.device
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prerank-metrics-")
    # The service is addressed by import string, so the offline package never imports it.
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_graceful_shutdown=30,
    )


def _demo(args: argparse.Namespace) -> None:
    from offline.demo import run_demo

    run_demo(args.dataset, args.protocol, args.data_dir, args.workdir, args.epochs, args.port)


def _download(args: argparse.Namespace) -> None:
    from offline.data.download import download_movielens

    path = download_movielens(args.data_dir)
    print(f"MovieLens-1M ready in {path}")


COMMANDS = {
    "train": _train,
    "export": _export,
    "zoo": _zoo,
    "quant-auc": _quant_auc,
    "versions": _versions,
    "rollback": _rollback,
    "serve": _serve,
    "demo": _demo,
    "download-movielens": _download,
}


def _redis_error() -> type[Exception]:
    try:
        from redis import RedisError
    except ImportError:  # the store extra is not installed
        return CliError
    return RedisError


#: Commands that live in the service package. The CLI is the composition root; these are loaded by
#: module name so that the offline package never imports the service.
SERVICE_COMMANDS = {"bench": "service.bench", "retrieval-recall": "service.retrieval_recall"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prerank` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICE_COMMANDS:
        import importlib

        entry: int = importlib.import_module(SERVICE_COMMANDS[argv[0]]).main(argv[1:])
        return entry
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    try:
        COMMANDS[args.command](args)
    except (CliError, FileNotFoundError, ValueError, KeyError, OSError, _redis_error()) as exc:
        message = str(exc).strip("'\"") or type(exc).__name__
        print(f"prerank {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
