#!/usr/bin/env bash
# The worlds tables (results/worlds/): every model on the three generated worlds with the CLI
# defaults, then prerank tune for each of MODELS (default: HIT, DCN and DSSM) on each world and the
# tuned table of those models. TRIALS (default 16) is each study's trial budget, TUNE_TIMEOUT
# (seconds) stops a study from starting more trials. WARM=1 starts each new study from the best
# trial of the committed one in results/worlds/tuned/<world>-<model>/ (prerank tune --warm-start),
# and DCN's from the committed HIT study of its world as well.
# LATEST (default: sequence-hit) names the studies that validate out of time: their schema is the
# world's with valid = "latest" (the sequence world's ads drift, and a random validation 1/8 of the
# training period cannot see how a time slope extrapolates). The tuned table trains every config on
# the world's own schema. Every step reuses finished runs and studies, so an interrupted run
# resumes. ~3.5 h on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
prerank worlds --out results/worlds --runs runs/worlds                       # defaults, 6 models x 3 seeds
for structure in maxsim cross sequence; do
  for model in ${MODELS:-hit dcn dssm}; do
    warm=()
    previous="results/worlds/tuned/$structure-$model/tune.json"
    [ -n "${WARM:-}" ] && [ -f "$previous" ] && warm=(--warm-start "$previous")
    hit_study="results/worlds/tuned/$structure-hit/tune.json"  # a ranking reference also tries HIT's settings
    [ -n "${WARM:-}" ] && [ "$model" = dcn ] && [ -f "$hit_study" ] && warm+=(--warm-start "$hit_study")
    schema="runs/worlds/$structure/data/$structure.toml"
    if [[ " ${LATEST-sequence-hit} " == *" $structure-$model "* ]]; then
      latest="runs/worlds/$structure/data/$structure-latest.toml"
      sed 's/^user_key = /valid = "latest"        # out-of-time validation: the latest 1\/8 of the non-test rows\nuser_key = /' "$schema" > "$latest"
      schema="$latest"
    fi
    prerank tune --dataset "$schema" --model "$model" \
                 --trials "${TRIALS:-16}" --epochs 12 --seed 0 ${TUNE_TIMEOUT:+--timeout "$TUNE_TIMEOUT"} \
                 "${warm[@]}" --out "runs/tune/$structure-$model" &
    [ "$(jobs -r | wc -l)" -ge 2 ] && wait -n
  done
done
wait
mkdir -p results/worlds/tuned
for study in runs/tune/*/; do
  name=$(basename "$study"); mkdir -p "results/worlds/tuned/$name"
  cp "$study"/tune.md "$study"/tune.json "$study"/model_config.json "$study"/train_config.json "results/worlds/tuned/$name/"
done
prerank worlds --out results/worlds/tuned --runs runs/worlds-tuned --models ${MODELS:-hit dcn dssm} --tuned runs/tune
