#!/usr/bin/env bash
# The serving path on a GPU, in one run: the CUDA tests, the kernel table with --device cuda, and
# the open-loop sweep of the same store served on the CPU, on the GPU, and on the GPU with the
# user towers of concurrent requests batched (PRERANK_USER_BATCH). Each server is pinned to CPU 0
# as in every other sweep; k6 runs on the other CPUs. The part "workers" (not in the default parts)
# sweeps CPU and GPU servers of PRERANK_GPU_SERVER_CORES (default 4) worker processes, each on its
# own CPU, sharing the one GPU. Nothing else may run meanwhile.
# Usage: bash results/scripts/run_gpu.sh STORE_URL OUT_DIR [DEVICE]
#   STORE_URL: a published store, e.g. local:runs/gpu/store (HIT on synthetic:50000, as trained by
#   results/scripts/run_vs_preissue.sh); DEVICE: cuda (default) or cpu for a dry run of the script.
set -uo pipefail
cd "$(dirname "$0")/../.."
store=${1:?STORE_URL}
out=${2:?OUT_DIR}
device=${3:-cuda}
seconds=${PRERANK_GPU_STEP_SECONDS:-6}
parts=${PRERANK_GPU_PARTS:-tests bench openloop}  # a subset reruns only those parts
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  fi
  grep -m1 'model name' /proc/cpuinfo
  nproc
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

if [[ $parts == *tests* ]]; then
  python3 -m pytest -q -p no:cacheprovider tests/service/test_cuda.py 2>&1 | tail -15 | tee "$out/pytest.txt"
fi

# One server on the device first, its log kept: the sweep's servers log nowhere.
port=18731
PRERANK_DEVICE=$device PRERANK_USER_BATCH=16 python3 -m prerank serve --store "$store" --port $port \
  > "$out/serve.log" 2>&1 &
pid=$!
python3 - "$port" <<'PY' 2>&1 | tee -a "$out/pytest.txt"
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):
    try:
        if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.5)
sample = json.loads(urllib.request.urlopen(url + "/sample?ads=1000&users=5").read())
body = json.dumps({"user": {"id": sample["user_ids"][0]}, "candidates": {"ad_ids": sample["ad_ids"]}, "top_k": 5})
req = urllib.request.Request(url + "/prerank", body.encode(), {"Content-Type": "application/json"})
answer = json.loads(urllib.request.urlopen(req).read())
print("smoke /prerank on the device server:", answer["ad_ids"], [round(p, 5) for p in answer["pctr"]])
PY
kill $pid; wait $pid 2>/dev/null
tail -40 "$out/serve.log"

models=(hit dssm inttower cold)
[[ $parts == *bench* ]] && python3 -m prerank bench --device "$device" --models "${models[@]}" --dtypes float32 bfloat16 \
  --candidates 1000 10000 --ads 50000 --repeats 200 --out "$out/bench" 2>&1 | tail -25

gpu=(--serve-env "gpu=PRERANK_DEVICE=$device")
batched=(--serve-env "gpu-batch=PRERANK_DEVICE=$device" --serve-env gpu-batch=PRERANK_USER_BATCH=16
  --serve-env gpu-batch=PRERANK_MAX_CONCURRENCY=8)
[[ $parts == *openloop* ]] && python3 -m prerank openloop --target "cpu=$store" --target "gpu=$store" "${gpu[@]}" \
  --target "gpu-batch=$store" "${batched[@]}" --candidates 1000 10000 --rates 200 400 800 1200 1600 \
  --seconds "$seconds" --warmup-seconds 2 --stop-after-saturation --out "$out/openloop" 2>&1 | tail -40

cores=${PRERANK_GPU_SERVER_CORES:-4}
[[ $parts == *workers* ]] && python3 -m prerank openloop --server-cores "$cores" --target "cpu=$store" \
  --target "gpu=$store" "${gpu[@]}" --candidates ${PRERANK_GPU_WORKER_CANDIDATES:-10000 1000} \
  --rates ${PRERANK_GPU_WORKER_RATES:-400 800 1200 1600 2400 3200} --seconds "$seconds" --warmup-seconds 2 \
  --stop-after-saturation --out "$out/openloop-$cores-workers" 2>&1 | tail -40
