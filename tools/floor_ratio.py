"""End-to-end p50 against the in-process floor, from one open-loop report and one bench run.

The floor is `prerank bench`'s `score` p50 for HIT (2 heads x 16, the served artifact's shape) in
fp32: the gather of the candidates' rows and the MaxSim GEMM, one thread, nothing else. The
end-to-end p50 is the open-loop sweep's at its lowest offered rate (the least queueing), through
HTTP, JSON and the server.

Usage: python -m tools.floor_ratio results/perf/peers/report.json results/perf/peers/floor/bench.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["floor_ratios", "main"]


def floor_ratios(
    openloop: dict[str, Any], bench: dict[str, Any], target: str, config: str = "hit 2x16"
) -> list[dict[str, Any]]:
    """Per candidate count in both: the e2e p50 at the lowest offered rate, the floor, their ratio."""
    floors = {
        str(c["candidates"]): c["score"]["p50_ms"]
        for c in bench["cells"]
        if c["config"] == config and c["dtype"] == "float32"
    }
    rows = []
    for n, entry in openloop["targets"][target].items():
        if n not in floors:
            continue
        lowest = min(entry["steps"], key=lambda s: s["offered_rps"])
        rows.append(
            {
                "candidates": int(n),
                "offered_rps": lowest["offered_rps"],
                "e2e_p50_ms": lowest["p50_ms"],
                "floor_p50_ms": floors[n],
                "ratio": lowest["p50_ms"] / floors[n],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.floor_ratio", description=__doc__)
    p.add_argument("openloop", type=Path, help="prerank openloop's report.json")
    p.add_argument("bench", type=Path, help="prerank bench's bench.json (HIT, float32)")
    p.add_argument("--target", default="hit", help="the open-loop target to compare (default: hit)")
    args = p.parse_args(argv)
    openloop, bench = json.loads(args.openloop.read_text()), json.loads(args.bench.read_text())
    rows = floor_ratios(openloop, bench, args.target)
    lines = [
        f"Machine: {bench['machine']}; open loop: {openloop['machine']}, started {openloop['started']}.",
        "",
        "| candidates | e2e p50 ms (offered req/s) | floor p50 ms (gather + GEMM) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['candidates']} | {r['e2e_p50_ms']:.2f} ({r['offered_rps']}) | {r['floor_p50_ms']:.3f} | "
        f"{r['ratio']:.1f}x |"
        for r in rows
    ]
    print("\n".join(lines))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
