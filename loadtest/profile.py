"""Where the server's time goes under load: py-spy samples `prerank serve` while k6 holds a fixed
arrival rate.

It starts `prerank serve` as the open-loop harness does (CPU 0, one torch thread), writes bodies of
`--candidates` real ids, runs k6 at `--rate` for `--seconds` and, meanwhile, `py-spy record
--nonblocking` on the server process (every thread, idle frames dropped). It writes the collapsed
stacks (`profile.txt`, any flame-graph tool renders them), `profile.json` and `profile.md`: each
named stage's share of the busy samples (a sample counts for every stage on its stack, so nested
stages overlap: `Scorer.prerank` holds the user tower and the rank, the rank holds gather + score)
and the functions that hold the most samples themselves. py-spy's idle detection is a heuristic:
the event loop's own polling and a worker thread waiting on its condition count as busy.

Usage:
  prerank profile --store local:runs/openloop/store-hit --candidates 10000 --rate 100 \\
      --seconds 20 --out results/perf/profile
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.openloop import bodies, run_step
from loadtest.run import cpu_model, server_process

__all__ = ["STAGES", "main", "parser", "summarise"]

#: Stage -> a frame on the stack that marks it ("function (file" as py-spy writes frames).
STAGES = {
    "HTTP server (uvicorn, starlette, FastAPI)": "run_asgi (",
    "read body": "_body (service/routes.py",
    "parse JSON (parse_prerank)": "parse_prerank (",
    "threadpool hop": "run_in_threadpool (",
    "Scorer.prerank": "prerank (service/scorer.py",
    "user features": "user_features (service/scorer.py",
    "id lookup": "lookup (service/store.py",
    "user tower": "encode_user (service/scorer.py",
    "rank (gather + score + calibrate + top-k)": "_rank (service/scorer.py",
    "gather + score": "score_rows (service/scorer.py",
    "metrics": "observe_result (",
    "response (payload + orjson)": "_scored (service/routes.py",
}


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Stage shares and the top self-time frames of py-spy's collapsed ("raw") output."""
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1]] += n
        for stage, marker in STAGES.items():
            if any(marker in f for f in frames):
                stages[stage] += n
    share = {s: stages[s] / total if total else 0.0 for s in STAGES}
    return {
        "samples": total,
        "stage_share": share,
        "top_self": [{"frame": f, "share": n / total} for f, n in leaves.most_common(top)],
    }


def markdown(report: dict[str, Any]) -> str:
    s, step = report["summary"], report["load"]
    lines = [
        f"Machine: {report['machine']}; `prerank serve` on CPU 0 (1 torch thread), k6 on the rest; "
        f"{report['candidates']} candidates at {step['offered_rps']} req/s offered for {report['seconds']} s "
        f"(achieved {step['achieved_rps']:.1f}, p50 {step['p50_ms']:.2f} ms, p99 {step['p99_ms']:.2f} ms, "
        f"{step['failed']} failed); {report['py_spy']} at {report['rate_hz']} Hz, {s['samples']} busy samples.",
        "",
        "| stage | share of busy samples |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {share:.1%} |" for stage, share in s["stage_share"].items()]
    lines += ["", "Frames holding the most samples themselves:", "", "| frame | share |", "|---|---|"]
    lines += [f"| `{t['frame']}` | {t['share']:.1%} |" for t in s["top_self"]]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prerank profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--store", required=True, help="store URL the server follows")
    p.add_argument("--candidates", type=int, default=10000)
    p.add_argument("--rate", type=int, default=100, help="offered req/s (open loop)")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--rate-hz", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("results/perf/profile"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        parser_.error("py-spy is not installed (pip install .[peers])")
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / "profile.txt"
    with tempfile.TemporaryDirectory(prefix="prerank-profile-") as tmp, server_process(args.store) as (url, proc):
        body_file = Path(tmp) / "bodies.json"
        body_file.write_text(json.dumps(bodies(url, args.candidates)))
        run_step(url, body_file, args.rate, 3, Path(tmp) / "warm.json")  # warm-up, not sampled
        record = [spy, "record", "--pid", str(proc.pid), "--duration", str(args.seconds), "--rate", str(args.rate_hz)]
        record += ["--nonblocking", "--format", "raw", "--output", str(collapsed)]
        sampler = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # py-spy attached before the load starts
        step = run_step(url, body_file, args.rate, args.seconds, Path(tmp) / "step.json")
        _, err = sampler.communicate(timeout=args.seconds + 60)
        if sampler.returncode != 0 or not collapsed.exists():
            raise RuntimeError(f"py-spy failed ({sampler.returncode}): {err[-2000:]}")
    version = subprocess.run([spy, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    report = {
        "machine": cpu_model(),
        "command": "prerank profile " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "candidates": args.candidates,
        "seconds": args.seconds,
        "rate_hz": args.rate_hz,
        "py_spy": version,
        "load": step,
        "summary": summarise(collapsed.read_text()),
    }
    (args.out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "profile.md").write_text(markdown(report))
    print(markdown(report), end="")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
