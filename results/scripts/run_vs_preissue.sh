#!/usr/bin/env bash
# The server as it was before the serving-performance work (commit ff30441, the parent of the
# first admission-control commit), the server now, and the two peer model servers (LitServe, Ray
# Serve; peers/) at 10k candidates: the same open-loop k6 sweep in one run, twice, the second
# time in the reverse order (this VM's speed drifts within minutes); then the in-process floor.
# The earlier commit cannot read today's store format, so it trains and exports its own store from
# the same dataset with the same recipe, from a git worktree (`openloop --code`: its server is
# started from that tree). Needs `pip install -e .[peers]`. Nothing else may run meanwhile.
# Usage: bash results/scripts/run_vs_preissue.sh [SECONDS_PER_STEP]   (~20 minutes with the default 15 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
before=ff30441
root=$(pwd)
data=synthetic:50000
work=$root/runs/vs-preissue
out=results/perf/vs-preissue
mkdir -p "$work" "$out"
old=$(mktemp -d)/before
git worktree add -q "$old" "$before"
trap 'git worktree remove --force "$old"' EXIT
(cd "$old" && python -m prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress \
  --out "$work/hit-before" && rm -rf "$work/store-before" && \
  python -m prerank export "$work/hit-before" --dataset $data --store "local:$work/store-before")
prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit-now"
rm -rf "$work/store-now"
prerank export "$work/hit-now" --dataset $data --store "local:$work/store-now"
sweep=(--candidates 10000 --rates 25 50 100 150 200 300 --seconds "$seconds" --stop-after-saturation)
before_target=(--target "before=local:$work/store-before" --code "before=$old")
now_target=(--target "now=local:$work/store-now")
peers=(--peer "litserve=local:$work/store-now" --peer "rayserve=local:$work/store-now")
prerank openloop "${before_target[@]}" "${now_target[@]}" "${peers[@]}" "${sweep[@]}" --out "$out/run1"
prerank openloop --peer "rayserve=local:$work/store-now" --peer "litserve=local:$work/store-now" \
  "${now_target[@]}" "${before_target[@]}" "${sweep[@]}" --out "$out/run2"
prerank bench --models hit --dtypes float32 --candidates 10000 --ads 50000 --repeats 300 --out "$out/floor"
