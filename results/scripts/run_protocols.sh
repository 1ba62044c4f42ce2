#!/usr/bin/env bash
# HTTP vs gRPC open-loop capacity on the same server (HIT, 50,000-ad synthetic index, one core),
# 1,000 and 10,000 candidates, then the overload check at 70% and 2x of each knee.
# Nothing else may run meanwhile (~10 minutes).
# Usage: bash results/scripts/run_protocols.sh [SECONDS_PER_STEP]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
rm -rf "$work/store-hit"
prerank export "$work/hit" --dataset $data --store "local:$work/store-hit"
prerank openloop --target hit=local:$work/store-hit --protocols http grpc --candidates 1000 10000 \
  --rates 50 100 150 200 250 300 400 --seconds "$seconds" --stop-after-saturation --overload \
  --out results/perf/protocols
