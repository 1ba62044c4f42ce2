#!/usr/bin/env bash
# Freshness bounds under open-loop load (HIT on a 50,000-ad synthetic index): 1 and 2 replicas
# following one real Redis, 50 req/s of 1,000 candidates; 4 rounds of a 30 s baseline phase then a
# 30 s phase with 1,000 events/s, a delta per second and a pause every 3 s. Nothing else may run
# meanwhile (~10 minutes).
# Usage: bash results/scripts/run_freshness.sh [SECONDS_PER_PHASE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
rounds=${2:-4}
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
prerank freshness "$work/hit" --dataset $data --replicas 1 2 --rate 50 --candidates 1000 \
  --events-per-second 1000 --seconds "$seconds" --rounds "$rounds" --out results/freshness
