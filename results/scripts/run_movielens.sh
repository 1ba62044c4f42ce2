#!/usr/bin/env bash
# Full MovieLens-1M runs behind results/movielens/movielens.md (about 40 minutes on 2 CPU cores).
# Usage: bash results/scripts/run_movielens.sh [DATA_DIR]   (default: $PRERANK_DATA_DIR/movielens-1m)
set -euo pipefail
# One intra-op thread: the numbers do not depend on the core count, and two runs share 2 cores well.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=${1:-${PRERANK_DATA_DIR:-data}/movielens-1m}
out=runs/movielens
mkdir -p "$out"
common=(--threads 1 --dataset movielens-1m --data-dir "$data" --no-progress)
# DSSM in the reference configuration (cosine score, temperature 1), batch 256, no dropout: see
# results/movielens/movielens.md for why (the reference code trains epochs 2+ with dropout switched off).
dssm_ref=(--model dssm --batch-size 256 --model-config '{"dropout": 0.0}')
for protocol in paper clean; do
  prerank train "${common[@]}" --protocol $protocol "${dssm_ref[@]}" --out $out/dssm-$protocol
  prerank train "${common[@]}" --protocol $protocol --model hit --baseline $out/dssm-$protocol --out $out/hit-$protocol
done
# Tuned DSSM (temperature 10) and the HIT generation-loss variants, paper protocol.
prerank train "${common[@]}" --protocol paper --model dssm --batch-size 256 \
  --model-config '{"dropout": 0.0, "temperature": 10}' --baseline $out/dssm-paper --out $out/dssm-t10-paper
for variant in repo_head repo_jul2024; do
  prerank train "${common[@]}" --protocol paper --model hit --model-config "{\"gen_loss\": \"$variant\"}" \
    --baseline $out/dssm-paper --out $out/hit-$variant-paper
done
prerank report movielens "$out" results/movielens/movielens.md
