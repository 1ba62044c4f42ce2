"""`POST /prerank` through Ray Serve, as its docs show: a `@serve.deployment` class that loads the
model in `__init__`, an async `__call__(request)` behind Ray's HTTP proxy, and Ray Serve's
`@serve.batch` dynamic batching on.

Code path per request: Ray's HTTP proxy actor (its own process) receives the request and routes it
through a deployment handle to the replica actor (another process); the replica's `__call__` reads
the JSON body, validates it into the service's `PrerankRequest` and awaits the batch method, which
collects up to `max_batch_size` requests (waiting at most `batch_wait_timeout_s`) and runs
`Scorer.prerank` on each; the payload dicts go back through the proxy as JSON. Ray is started with
one CPU (the replica asks for it), no dashboard.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from peers.common import jsonable, live_scorer, parser
from service.schemas import PrerankRequest


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class Prerank:
    def __init__(self, store: str, threads: int) -> None:
        self.scorer = live_scorer(store, threads)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[PrerankRequest]) -> list[dict[str, Any]]:
        return [jsonable(self.scorer.prerank(r).payload(r.request_id)) for r in requests]

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = PrerankRequest.model_validate(await request.json())
        return await self.score(body)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    args = parser("python -m peers.rayserve_app").parse_args(argv)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Prerank.bind(args.store, args.threads), route_prefix="/prerank")  # type: ignore[attr-defined]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
