"""Server-Timing stages of `prerank serve` (CPU 0, one torch thread) at 10k candidates: 300
sequential requests 5 ms apart, three rounds. Usage, from the repository root:
PYTHONPATH=. python results/perf/vs-preissue/intel-run/probes/stages.py local:runs/vs-preissue/store-now
"""

import http.client
import statistics
import sys
import time
import urllib.parse

from loadtest.openloop import bodies
from loadtest.run import server

store = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
with server(store) as url:
    bs = [b.encode() for b in bodies(url, 10000)]
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port)
    for rnd in range(3):
        lat: list[float] = []
        st: dict[str, list[float]] = {}
        for i in range(n):
            b = bs[i % len(bs)]
            t = time.perf_counter()
            c.request("POST", "/prerank", b, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            lat.append((time.perf_counter() - t) * 1e3)
            for part in (r.getheader("server-timing") or "").split(", "):
                k, v = part.split(";dur=")
                st.setdefault(k, []).append(float(v))
            time.sleep(0.005)
        med = {k: round(statistics.median(v), 3) for k, v in st.items()}
        print(f"round {rnd}: client p50 {statistics.median(lat):.2f} ms, sum stages {sum(med.values()):.2f}", med)
