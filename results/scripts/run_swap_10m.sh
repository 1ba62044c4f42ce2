#!/usr/bin/env bash
# Server memory across a hot swap at 10M ads with both FAISS indexes (fp32 rows): the RSS of a
# server with nothing published, of one holding the version, and its peak (VmHWM) while it loads
# and swaps to a second version that `prerank export` publishes into the same store meanwhile.
# Needs runs/ann10m (results/scripts/run_retrieve_10m.sh). ~15 minutes; nothing else may run meanwhile.
# Usage: bash results/scripts/run_swap_10m.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
data=synthetic:10000000:2000000
work=runs/ann10m
out=results/scale/ads/swap-10m-pairs
mkdir -p "$out"
empty=$(mktemp -d)
trap 'kill $pid $pid0 2>/dev/null || true; rm -rf "$empty"' EXIT
rss() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
port() { python -c 'from tools.procs import free_port; print(free_port())'; }
p0=$(port)
PRERANK_TORCH_THREADS=1 prerank serve --store "local:$empty" --port "$p0" 2>/dev/null & pid0=$!
python -c "from tools.procs import wait_until_ready; wait_until_ready('http://127.0.0.1:$p0', timeout=120, path='/healthz')"
sleep 5
empty_kib=$(rss $pid0 VmRSS)
kill $pid0
p1=$(port)
PRERANK_TORCH_THREADS=1 PRERANK_POLL_SECONDS=1 prerank serve --store "local:$work/store" --port "$p1" 2>/dev/null & pid=$!
python -c "from tools.procs import wait_until_ready; wait_until_ready('http://127.0.0.1:$p1', timeout=600)"
first=$(curl -s "http://127.0.0.1:$p1/readyz" | python -c 'import json,sys; print(json.load(sys.stdin)["live_version"])')
one_kib=$(rss $pid VmRSS)
start=$(date +%s)
prerank export "$work/hit" --dataset $data --store "local:$work/store" > "$out/export.log" 2>&1
export_s=$(( $(date +%s) - start ))
python - "$p1" "$first" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
for _ in range(1200):
    if json.loads(urllib.request.urlopen(url).read())["live_version"] != sys.argv[2]:
        break
    time.sleep(0.5)
else:
    raise SystemExit("the server never swapped")
PY
sleep 10
peak_kib=$(rss $pid VmHWM); after_kib=$(rss $pid VmRSS)
bytes=$(du -sb "$work/store/versions/$first" | cut -f1)
python - "$empty_kib" "$one_kib" "$peak_kib" "$after_kib" "$bytes" "$export_s" "$out" <<'PY'
import json, sys
from models.provenance import code_version, machine
empty, one, peak, after, size, export_s = (int(x) for x in sys.argv[1:7])
kib = 1024
doc = {
    "machine": machine(), "code_version": code_version(),
    "index": "HIT 2 x 16 on synthetic:10000000:2000000: 10M ads, fp32 rows, heads IVF-flat + pairs IVF-fp16",
    "version_bytes_on_disk": size, "rss_empty_server_kib": empty, "rss_one_version_kib": one,
    "peak_rss_across_swap_kib": peak, "rss_after_swap_kib": after, "second_export_seconds": export_s,
    "peak_over_version_bytes": round(peak * kib / size, 3),
    "peak_minus_empty_over_version_bytes": round((peak - empty) * kib / size, 3),
    "command": "bash results/scripts/run_swap_10m.sh",
}
open(f"{sys.argv[7]}/swap.json", "w").write(json.dumps(doc, indent=2) + "\n")
print(json.dumps(doc, indent=2))
PY
