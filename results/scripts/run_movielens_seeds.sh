#!/usr/bin/env bash
# Seed repeats on the paper protocol (the published HIT number is a mean over runs).
# Usage: bash results/scripts/run_movielens_seeds.sh [DATA_DIR]
set -euo pipefail
# One intra-op thread: the numbers do not depend on the core count, and two runs share 2 cores well.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=${1:-${PRERANK_DATA_DIR:-data}/movielens-1m}
out=runs/movielens-seeds
mkdir -p "$out"
common=(--threads 1 --dataset movielens-1m --data-dir "$data" --protocol paper --no-progress)
for seed in 1 2 3; do
  prerank train "${common[@]}" --seed $seed --model dssm --batch-size 256 --model-config '{"dropout": 0.0}' \
    --out $out/dssm-paper-s$seed
  prerank train "${common[@]}" --seed $seed --model hit --out $out/hit-paper-s$seed
done
prerank report seeds "$out" results/movielens/movielens.md
