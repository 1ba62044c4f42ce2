"""Three minimal apps for http_floor.py: the cost of the HTTP layer alone."""

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

RESP = orjson.dumps({"ad_ids": list(range(200)), "pctr": [0.1] * 200, "ecpm": [0.1] * 200})


async def raw(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": RESP})


fast = FastAPI()


@fast.post("/prerank")
async def p(request: Request) -> Response:
    await request.body()
    return Response(RESP, media_type="application/json")


fastpool = FastAPI()


def work(b):
    return RESP


@fastpool.post("/prerank")
async def p2(request: Request) -> Response:
    body = await request.body()
    r = await run_in_threadpool(work, body)
    return Response(r, media_type="application/json")
