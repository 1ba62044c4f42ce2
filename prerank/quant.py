"""`prerank quant-auc`: test AUC with the ad vectors stored as fp32, bf16 and int8."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from models.artifact import load_artifact
from prerank.job import add_data_args, add_threads_arg, job_parser, run_job

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = job_parser("quant-auc", "Test AUC with the stored ad vectors as fp32, bf16 and int8, scored as served.")
    p.add_argument("artifact", type=Path, help="model artifact directory")
    add_data_args(p)
    p.add_argument("--out", type=Path, help="write the JSON result here")
    add_threads_arg(p)
    return p


def _run(args: argparse.Namespace) -> None:
    load_artifact(args.artifact)
    from offline.data import load_dataset
    from offline.quant import quantized_auc

    result = quantized_auc(args.artifact, load_dataset(args.dataset, args.protocol, args.data_dir, args.split_seed))
    for dtype, m in result["dtypes"].items():
        print(f"{dtype:9s} test AUC {m['auc']:.5f}  LogLoss {m['logloss']:.5f}  AUC change {m['auc_change']:+.5f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("quant-auc", parser(), _run, argv)
