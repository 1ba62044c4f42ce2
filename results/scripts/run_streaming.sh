#!/usr/bin/env bash
# Streamed training and export at production size: three scale worlds (1M, 10M and 100M rows; 10M
# ads and 50M users each), `prerank stream-bench` on them (peak RSS, rows/s; in memory too at 1M
# rows), then the 100M-row world's artifact exported with --stream (users per request) into a
# private redis-server with the version files in a local blob directory. Nothing else may run
# meanwhile. Disk: ~1.8 GiB of shards. Usage: bash results/scripts/run_streaming.sh  (~1 hour)
set -euo pipefail
cd "$(dirname "$0")/../.."
for rows in 1M 10M 100M; do
  w=runs/scale/w${rows,,}
  [ -f "$w/reference.json" ] || prerank generate-scale --out "$w" --rows "$rows"
done
prerank stream-bench runs/scale/w1m/schema.toml runs/scale/w10m/schema.toml runs/scale/w100m/schema.toml \
  --steps 600 --in-memory-up-to 1000000 --out results/scale/streaming
port=$(python -c "from tools.procs import free_port; print(free_port())")
dir=$(mktemp -d)
redis-server --port "$port" --save "" --appendonly no --dir "$dir" --daemonize yes >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
python - "$port" <<'PY' | tee results/scale/streaming/export.json
import json, resource, subprocess, sys, time
import redis
port = sys.argv[1]
r = redis.Redis(port=int(port))
before = r.info("memory")["used_memory"]
cmd = ["prerank", "export", "runs/stream-bench/100000000-stream/artifact", "--dataset", "runs/scale/w100m/schema.toml",
       "--stream", "--store", f"redis://127.0.0.1:{port}/0", "--blobs", "runs/scale/blobs", "--user-store", "per-request",
       "--threads", "2"]
t0 = time.perf_counter()
done = subprocess.run(cmd, capture_output=True, text=True, check=True)
wall = time.perf_counter() - t0
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the export process (the only child)
after = r.info("memory")["used_memory"]
print(json.dumps({"command": " ".join(cmd), "wall_seconds": round(wall, 1), "peak_rss_bytes": peak_kib * 1024,
                  "redis_bytes_added": after - before, "output": done.stdout.strip().splitlines()[-1]}, indent=2))
PY
