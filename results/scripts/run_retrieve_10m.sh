#!/usr/bin/env bash
# /retrieve on 10M ads: recall@100 of the two-index search against exact MaxSim on 1,000 users (every
# ANN call timed back to back, apart from the exact passes), then the server under open-loop
# /retrieve load (k6, constant arrival rate, top_k 100). Builds the store first if it is not there
# (~20 minutes: training ~2, export with both FAISS indexes ~17). Nothing else may run meanwhile.
# Usage: bash results/scripts/run_retrieve_10m.sh [SECONDS_PER_STEP]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
root=$(pwd)
data=synthetic:10000000:2000000
work=$root/runs/ann10m
out=results/scale/ann
mkdir -p "$work" "$out"
[ -f "$work/hit/metrics.json" ] || prerank train --dataset $data --model hit --epochs 1 --sparse-embeddings \
  --threads 2 --no-progress --out "$work/hit"
[ -d "$work/store" ] || prerank export "$work/hit" --dataset $data --store "local:$work/store"
prerank retrieval-recall --store "local:$work/store" --k 100 --users 1000 --out "$out/recall-10m-apart.json"
prerank openloop --target "hit=local:$work/store" --endpoint retrieve --candidates 100 --rates 10 25 50 100 \
  --seconds "$seconds" --stop-after-saturation --out "$out/retrieve-openloop"
