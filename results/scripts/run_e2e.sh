#!/usr/bin/env bash
# End-to-end latency over HTTP, HIT vs DSSM vs COLD on the same requests, on a 50,000-ad
# synthetic corpus (MovieLens has only 3,640 ads, too few for 10k-candidate requests).
# The models are trained for one epoch: only their serving cost matters here.
# Usage: bash results/scripts/run_e2e.sh [SECONDS_PER_STEP]   (~8 minutes with the default 30 s)
set -euo pipefail
export OMP_NUM_THREADS=1
seconds=${1:-30}
data=synthetic:50000
work=runs/e2e
mkdir -p "$work"
for model in hit dssm cold; do
  [ -f "$work/$model/metrics.json" ] || prerank train --threads 1 --dataset $data --model $model --epochs 1 --no-progress --out "$work/$model"
  rm -rf "$work/store-$model"
  prerank export "$work/$model" --dataset $data --store "local:$work/store-$model"
done
prerank loadtest \
  --target hit=local:$work/store-hit --target dssm=local:$work/store-dssm --target cold=local:$work/store-cold \
  --candidates 1000 5000 10000 --users 2 --seconds "$seconds" --encoding base64 \
  --ratio hit/dssm --ratio cold/hit --out results/e2e
