#!/usr/bin/env bash
# The user store at growing user counts, replicated against per-request (Redis bytes, replica RSS,
# lookup latency), then the added end-to-end latency of per-request user rows at 10k candidates,
# open loop, with the LRU off (every request reads its row from Redis). Nothing else may run meanwhile.
# Usage: bash results/scripts/run_user_store.sh [SECONDS_PER_STEP]   (~15 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
data=synthetic:50000
work=runs/openloop
mkdir -p "$work"
[ -f "$work/hit/metrics.json" ] || prerank train --threads 1 --dataset $data --model hit --epochs 1 --no-progress --out "$work/hit"
prerank user-store-bench "$work/hit" --dataset $data --users 100000 1000000 4000000 10000000 --out results/scale/users
port=$(python -c "from tools.procs import free_port; print(free_port())")
dir=$(mktemp -d)
redis-server --port "$port" --save "" --appendonly no --dir "$dir" --daemonize yes >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
prerank export "$work/hit" --dataset $data --store "redis://127.0.0.1:$port/1" --user-store replicated
prerank export "$work/hit" --dataset $data --store "redis://127.0.0.1:$port/2" --user-store per-request
PRERANK_USER_CACHE_SIZE=1 prerank openloop --target "replicated=redis://127.0.0.1:$port/1" \
  --target "per-request=redis://127.0.0.1:$port/2" --candidates 10000 --rates 25 50 100 150 \
  --seconds "$seconds" --out results/scale/users/openloop
