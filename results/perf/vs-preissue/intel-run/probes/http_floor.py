"""The HTTP floor: a 99 KB /prerank-sized POST answered with a fixed 2 KB body by a bare ASGI app,
a FastAPI route, and a FastAPI route with a threadpool hop (http_apps.py), uvicorn pinned to CPU 0,
this client on CPU 1, 400 sequential requests 5 ms apart, two rounds.

Usage (from this folder): python http_floor.py http_apps:raw | http_apps:fast | http_apps:fastpool
"""

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

port = 8711
app = sys.argv[1]
srv = subprocess.Popen(
    [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ],
    cwd=Path(__file__).parent,
)
time.sleep(3)
os.sched_setaffinity(0, {1})
body = json.dumps(
    {"user": {"id": "1"}, "candidates": {"ad_ids": random.sample(range(10**9), 10000)}, "top_k": 200}
).encode()
c = http.client.HTTPConnection("127.0.0.1", port)
for _round in range(2):
    lat = []
    for _ in range(400):
        t = time.perf_counter()
        c.request("POST", "/prerank", body, {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        lat.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.005)
    print(app, f"p50 {statistics.median(lat):.3f} ms")
srv.terminate()
