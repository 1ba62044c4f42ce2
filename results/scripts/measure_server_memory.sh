#!/usr/bin/env bash
# Server memory for sizing the Kubernetes requests/limits: RSS after one version is loaded, and the
# peak (VmHWM) across a hot swap to a second version, on a 50,000-ad HIT index.
# Usage: bash results/scripts/measure_server_memory.sh   (about 2 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
prerank train --threads 1 --dataset synthetic:50000 --model hit --epochs 1 --no-progress --out "$work/hit" >/dev/null
prerank export "$work/hit" --dataset synthetic:50000 --store "local:$work/store" >/dev/null
port=$(python -c 'from tools.procs import free_port; print(free_port())')
PRERANK_POLL_SECONDS=0.5 prerank serve --store "local:$work/store" --port "$port" 2>/dev/null & pid=$!
python -c "from tools.procs import wait_until_ready; wait_until_ready('http://127.0.0.1:$port', timeout=120)"
rss() { awk "/^$1:/ {print \$2}" "/proc/$pid/status"; }
one=$(rss VmRSS)
prerank export "$work/hit" --dataset synthetic:50000 --store "local:$work/store" >/dev/null
python - "$port" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
for _ in range(240):
    if json.loads(urllib.request.urlopen(url).read())["live_version"] == "v000002":
        break
    time.sleep(0.25)
PY
peak=$(rss VmHWM); after=$(rss VmRSS)
bytes=$(du -sb "$work/store/versions/v000001" | cut -f1)
python - "$one" "$peak" "$after" "$bytes" <<'PY'
import json, sys
from models.provenance import code_version, machine
one, peak, after, size = (int(x) for x in sys.argv[1:5])
doc = {"machine": machine(), "code_version": code_version(), "index": "HIT, synthetic:50000 (50,000 ads x 2 x 16 fp32)",
       "version_bytes_on_disk": size, "rss_one_version_kib": one, "peak_rss_across_swap_kib": peak,
       "rss_after_swap_kib": after, "command": "bash results/scripts/measure_server_memory.sh"}
open("results/ops/server_memory.json", "w").write(json.dumps(doc, indent=2) + "\n")
print(json.dumps(doc, indent=2))
PY
