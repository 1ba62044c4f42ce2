#!/usr/bin/env bash
# Open-loop capacity of the server (HIT on a 50,000-ad synthetic index), k6 at fixed arrival rates,
# per candidate count, stopping a sweep once arrivals are dropped. Nothing else may run meanwhile.
# Usage: bash results/scripts/run_openloop.sh [SECONDS_PER_STEP]   (~6 minutes with the default 15 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
rm -rf "$work/store-hit"
prerank export "$work/hit" --dataset $data --store "local:$work/store-hit"
prerank openloop --target hit=local:$work/store-hit --candidates 1000 5000 10000 \
  --rates 25 50 100 150 200 300 400 --seconds "$seconds" --stop-after-saturation --out results/perf/openloop
