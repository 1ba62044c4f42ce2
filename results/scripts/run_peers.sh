#!/usr/bin/env bash
# Our server against two mainstream model servers (LitServe, Ray Serve; peers/) on the same HIT
# artifact and 50,000-ad index: the same open-loop k6 sweep, the same bodies, the same pinning (server
# on CPU 0 with one torch thread, k6 on the rest), in one run; then the in-process floor (gather of
# the candidates' rows + the MaxSim GEMM, one thread) timed right after, for the floor ratio.
# Needs `pip install -e .[peers]`. Nothing else may run meanwhile.
# Usage: bash results/scripts/run_peers.sh [SECONDS_PER_STEP]   (~20 minutes with the default 15 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
data=synthetic:50000
work=runs/openloop
out=results/perf/peers
mkdir -p "$work" "$out"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
rm -rf "$work/store-hit"
prerank export "$work/hit" --dataset $data --store "local:$work/store-hit"
store="local:$work/store-hit"
prerank openloop --target hit=$store --peer litserve=$store --peer rayserve=$store \
  --candidates 1000 5000 10000 --rates 25 50 100 150 200 300 400 --seconds "$seconds" \
  --stop-after-saturation --out "$out"
prerank bench --models hit --dtypes float32 --candidates 1000 5000 10000 --ads 50000 --repeats 300 --out "$out/floor"
python -m tools.floor_ratio "$out/report.json" "$out/floor/bench.json" --target hit > "$out/floor_ratio.md"
cat "$out/floor_ratio.md"
# Where our server's time goes at 10k candidates: py-spy under a fixed open-loop load, same store.
prerank profile --store "$store" --candidates 10000 --rate 50 --seconds 20 --out results/perf/profile
