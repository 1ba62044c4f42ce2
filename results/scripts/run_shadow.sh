#!/usr/bin/env bash
# What shadow scoring costs live traffic: HIT live on a 50,000-ad synthetic index, a wide DCN ranking
# reference (hidden 1024-1024-512, about 10x slower per request) shadowing every request;
# 50 req/s of 1,000 candidates, 3 rounds of 30 s without then 30 s with the shadow. Nothing else may run (~4 minutes).
# Usage: bash results/scripts/run_shadow.sh [SECONDS_PER_PHASE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
rounds=${2:-3}
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
[ -f "$work/dcn-wide/metrics.json" ] || prerank train --threads 1 --dataset $data --model dcn --epochs 1 --no-progress \
  --model-config '{"hidden": [1024, 1024, 512]}' --out "$work/dcn-wide"
prerank shadow-bench "$work/hit" "$work/dcn-wide" --dataset $data --rate 50 --candidates 1000 --sample 1.0 \
  --seconds "$seconds" --rounds "$rounds" --out results/shadow
