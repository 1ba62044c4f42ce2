#!/usr/bin/env bash
# The server at an earlier commit against the working tree on one store, open loop at 10k
# candidates, then the in-process floor, in one run. The earlier commit runs from a git worktree:
# `python -m prerank` started there imports that tree's code (server included).
# Needs runs/openloop/store-hit (results/scripts/run_openloop.sh). Nothing else may run meanwhile.
# Usage: bash results/scripts/run_before_after.sh [COMMIT]   (~6 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:-79538d1}
root=$(pwd)
store=local:$root/runs/openloop/store-hit
out=results/perf/before-after
old=$(mktemp -d)/before
git worktree add -q "$old" "$before"
trap 'git worktree remove --force "$old"' EXIT
(cd "$old" && python -m prerank openloop --target before=$store --candidates 10000 --rates 25 50 100 150 200 \
  --seconds 15 --stop-after-saturation --out "$root/$out/before")
python -m prerank openloop --target after=$store --candidates 10000 --rates 25 50 100 150 200 \
  --seconds 15 --stop-after-saturation --out "$out/after"
prerank bench --models hit --dtypes float32 --candidates 10000 --ads 50000 --repeats 300 --out "$out/floor"
