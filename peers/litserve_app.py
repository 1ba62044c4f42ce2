"""`POST /prerank` through LitServe (Lightning AI), as its docs show: a `LitAPI` whose `setup`
loads the model, `decode_request`/`predict`/`encode_response` per request, and LitServe's own
dynamic batching on (`max_batch_size`, `batch_timeout`).

Code path per request: LitServe's uvicorn/FastAPI API-server process parses the JSON body to a dict,
hands it to the inference worker process over LitServe's queue, the worker batches up to
`max_batch_size` requests (waiting at most `batch_timeout`), `decode_request` validates each into
the service's `PrerankRequest`, `predict` runs `Scorer.prerank` on each (the requests of a batch have
their own users and candidate lists, so each is scored as ours scores it), and the payload goes back
over the queue to be serialised as JSON.
"""

from typing import Any

import litserve as ls

from peers.common import jsonable, live_scorer, parser
from service.schemas import PrerankRequest
from service.scorer import Scorer


class PrerankAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, store: str, threads: int, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/prerank")
        self.store, self.threads = store, threads
        self.scorer: Scorer | None = None

    def setup(self, device: str) -> None:
        self.scorer = live_scorer(self.store, self.threads)

    def decode_request(self, request, **kwargs: Any) -> PrerankRequest:  # type: ignore[no-untyped-def]  # LitServe reads the annotation
        return PrerankRequest.model_validate(request)

    def batch(self, inputs: list[PrerankRequest]) -> list[PrerankRequest]:
        return inputs

    def predict(self, x: list[PrerankRequest], **kwargs: Any) -> list[dict[str, Any]]:
        assert self.scorer is not None
        return [jsonable(self.scorer.prerank(r).payload(r.request_id)) for r in x]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return output


def main(argv: list[str] | None = None) -> None:
    p = parser("python -m peers.litserve_app")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-timeout", type=float, default=0.002, help="seconds a batch waits to fill")
    args = p.parse_args(argv)
    api = PrerankAPI(args.store, args.threads, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
