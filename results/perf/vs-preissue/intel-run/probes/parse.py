"""JSON parse of a /prerank body of 10,000 ad ids (99 KB), hot loop, one thread: the service's
pydantic path against orjson + numpy (pysimdjson, not a dependency, was timed the same way:
`pip install pysimdjson==7.0.2`, then this script times it too)."""

import json
import random
import time

import numpy as np
import orjson

from service.schemas import PrerankRequest

ids = random.Random(0).sample(range(10**9), 10000)
body = json.dumps({"user": {"id": "1"}, "candidates": {"ad_ids": ids}, "top_k": 200}).encode()


def timed(f, n=500):
    f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e3


print(f"pydantic PrerankRequest.model_validate_json: {timed(lambda: PrerankRequest.model_validate_json(body)):.3f} ms")
print(f"orjson.loads: {timed(lambda: orjson.loads(body)):.3f} ms")
print(f"np.array(list of 10k ints): {timed(lambda: np.array(ids, dtype=np.int64)):.3f} ms")
try:
    import simdjson

    parser = simdjson.Parser()

    def simd():
        doc = parser.parse(body)
        out = np.frombuffer(doc["candidates"]["ad_ids"].as_buffer(of_type="i"), dtype=np.int64).copy()
        del doc
        return out

    print(f"pysimdjson parse + as_buffer: {timed(simd):.3f} ms")
except ImportError:
    pass
