#!/usr/bin/env bash
# Business metrics of the serving benchmarks' artifacts (HIT, DSSM, COLD, DCN, each 1 epoch with the
# CLI defaults on the 50,000-ad synthetic data, whose click probability is known) against the DCN
# reference: test AUC / calibrated LogLoss / ECE / GAUC, revenue@10 and consistency on 300 users x
# 1,000 random candidates, and the reliability plot. These are short runs, far from the Bayes AUC;
# the accuracy issue's worlds and recipes are where the models are trained to their best.
# Usage: bash results/scripts/run_evaluate.sh   (~2 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
for m in hit dssm cold dcn; do
  [ -f "$work/$m/metrics.json" ] || prerank train --threads 2 --dataset $data --model $m --epochs 1 --no-progress --out "$work/$m"
done
prerank evaluate hit=$work/hit dssm=$work/dssm cold=$work/cold dcn=$work/dcn --dataset $data --reference dcn \
  --out results/evaluate --threads 2
