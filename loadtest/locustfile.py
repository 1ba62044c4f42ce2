"""Locust scenario for POST /prerank with realistic payloads.

Ad ids and user ids come from the live index (`GET /sample`), fetched once per test run.
Candidate counts follow a mix (weights in CANDIDATE_MIX; override with PRERANK_CANDIDATES="1000"
to pin one count). Each response is validated: status, one version pair, ranked ads all from
the request, eCPM sorted, pCTR in [0, 1].

Bodies are prepared ahead (BODY_POOL per candidate count, random real users and ads).
PRERANK_ENCODING=base64 sends the candidate columns as base64 binary (int64 ids, float32 bids)
instead of JSON arrays. PRERANK_RAW_TIMINGS=FILE writes every successful request's response time
(ms, unrounded) to FILE when the test stops: Locust's own percentiles are rounded to whole ms.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import struct
import urllib.request
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task

CANDIDATE_MIX = {100: 3, 1000: 3, 5000: 2, 10000: 1}
SAMPLE: dict[str, Any] = {}
TIMINGS: list[float] = []


@events.request.add_listener
def record(response_time: float, exception: Exception | None, **_: Any) -> None:
    if exception is None:
        TIMINGS.append(response_time)


@events.test_stop.add_listener
def dump_timings(**_: Any) -> None:
    path = os.environ.get("PRERANK_RAW_TIMINGS")
    if path:
        with open(path, "w") as fh:
            fh.write("\n".join(f"{t:.4f}" for t in TIMINGS) + "\n")


def candidate_mix() -> dict[int, int]:
    pinned = os.environ.get("PRERANK_CANDIDATES")
    return {int(pinned): 1} if pinned else CANDIDATE_MIX


@events.test_start.add_listener
def load_sample(environment: Any, **_: Any) -> None:
    """Real ids from the server's live version."""
    host = environment.host or environment.parsed_options.host
    n = max(candidate_mix())
    with urllib.request.urlopen(f"{host}/sample?ads={n}&users=1000", timeout=30) as resp:
        SAMPLE.update(json.loads(resp.read()))


JSON = {"content-type": "application/json"}
#: Request bodies are built ahead, BODY_POOL per candidate count, so the load generator's own CPU
#: time (10k-id lists, base64) does not queue behind responses and inflate measured latency.
BODY_POOL = 32
BODIES: dict[int, list[tuple[bytes, set[int]]]] = {}


def _body(n: int) -> tuple[bytes, set[int]]:
    ads = random.sample(SAMPLE["ad_ids"], min(n, len(SAMPLE["ad_ids"])))
    bids = [round(random.uniform(0.2, 3.0), 3) for _ in ads]
    columns: dict[str, Any] = {"ad_ids": ads, "bids": bids}
    if os.environ.get("PRERANK_ENCODING") == "base64":
        columns = {
            "ad_ids": base64.b64encode(struct.pack(f"<{len(ads)}q", *ads)).decode(),
            "bids": base64.b64encode(struct.pack(f"<{len(bids)}f", *bids)).decode(),
        }
    body = {"user": {"id": random.choice(SAMPLE["user_ids"])}, "candidates": columns, "top_k": 200}
    return json.dumps(body).encode(), set(ads)


def bodies(n: int) -> list[tuple[bytes, set[int]]]:
    """The pool of prepared request bodies (random real users and ads) for `n` candidates."""
    if n not in BODIES:
        BODIES[n] = [_body(n) for _ in range(BODY_POOL)]
    return BODIES[n]


def validate(body: dict[str, Any], sent: set[int], top_k: int) -> str | None:
    ids, pctr, ecpm = body["ad_ids"], body["pctr"], body["ecpm"]
    if len(ids) != min(top_k, len(sent) - len(body["unknown_ad_ids"])):
        return f"expected {top_k} ranked ads, got {len(ids)}"
    if not set(ids) <= sent:
        return "ranked an ad that was not a candidate"
    if any(a < b for a, b in itertools.pairwise(ecpm)):
        return "eCPM not sorted"
    if any(not 0.0 <= p <= 1.0 for p in pctr):
        return "pCTR outside [0, 1]"
    return None


class PrerankUser(FastHttpUser):
    """One recall service sending candidate lists for random users.

    PRERANK_USER_RPS caps each user's request rate (open-loop-like load for soak tests);
    unset, each user sends back to back.
    """

    if os.environ.get("PRERANK_USER_RPS"):
        wait_time = constant_throughput(float(os.environ["PRERANK_USER_RPS"]))

    @task
    def prerank(self) -> None:
        mix = candidate_mix()
        n = random.choices(list(mix), weights=list(mix.values()))[0]
        body, sent = random.choice(bodies(n))
        post = self.client.post  # bytes bodies are sent as they are (the stubs say str)
        with post("/prerank", data=body, headers=JSON, name=f"/prerank n={n}", catch_response=True) as resp:  # type: ignore[arg-type]
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            problem = validate(resp.json(), sent, 200)
            if problem:
                resp.failure(problem)
