#!/usr/bin/env bash
# uvicorn against granian, the same app (`prerank serve --server`), the same HIT artifact and
# 50,000-ad index, the same open-loop k6 bodies and rates, the same pinning (server on CPU 0 with one
# torch thread, k6 on the rest), in one run. Nothing else may run meanwhile.
# Usage: bash results/scripts/run_servers.sh [SECONDS_PER_STEP]   (~12 minutes with the default 15 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
data=synthetic:50000
work=runs/openloop
out=results/perf/servers
mkdir -p "$work" "$out"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
[ -d "$work/store-hit" ] || prerank export "$work/hit" --dataset $data --store "local:$work/store-hit"
store="local:$work/store-hit"
prerank openloop --target uvicorn=$store --target granian=$store --server granian=granian \
  --candidates 1000 10000 --rates 25 50 100 150 200 300 400 --seconds "$seconds" \
  --stop-after-saturation --out "$out"
