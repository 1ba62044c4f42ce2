"""parse_prerank: the simdjson column decoder gives exactly what pydantic's own parse gives (values
and errors), and hands every body that is not in the plain form to pydantic."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest
from pydantic import ValidationError

from service.schemas import FAST_MIN_IDS, PrerankRequest, _decoded_columns, parse_prerank

pytest.importorskip("simdjson")

N = 1000
rng = random.Random(7)
IDS = rng.sample(range(10**12), N)
BIDS = [round(rng.uniform(0.01, 5.0), 6) for _ in range(N)]


def _body(candidates: dict, **top: object) -> bytes:
    return json.dumps({"user": {"id": "u1"}, "candidates": candidates, **top}).encode()


def _outcome(parse, body: bytes):  # type: ignore[no-untyped-def]
    """(dump, ids, bids) of a parsed body, or the errors' (loc, msg, type)."""
    try:
        req = parse(body)
    except ValidationError as e:
        return ("error", [(err["loc"], err["msg"], err["type"]) for err in e.errors()])
    bids = req.candidates.bid_array
    dump = req.model_dump(exclude={"candidates"})
    return ("ok", dump, req.candidates.ids.tolist(), None if bids is None else bids.tolist())


PLAIN = {
    "ids only": _body({"ad_ids": IDS}, top_k=200),
    "ids and bids": _body({"ad_ids": IDS, "bids": BIDS}, request_id="r-1", unknown_user="reject"),
    "base64 bids": _body(
        {"ad_ids": IDS, "bids": base64.b64encode(np.asarray(BIDS, "<f4").tobytes()).decode()}, top_k=None
    ),
    "features and whitespace": json.dumps(
        {"user": {"id": 5, "features": {"genre": "x", "hist": [1, 2, "a"], "age": 3.5}}, "candidates": {"ad_ids": IDS}},
        indent=2,
    ).encode(),
    "duplicate ids": _body({"ad_ids": [*IDS[:-1], IDS[0]]}),
    "bids of another length": _body({"ad_ids": IDS, "bids": BIDS[:-1]}),
    "unknown key in candidates": _body({"ad_ids": IDS, "extra": 1}),
    "bad top_k": _body({"ad_ids": IDS}, top_k=0),
    "bad user": json.dumps({"user": {"id": ""}, "candidates": {"ad_ids": IDS}}).encode(),
    "a [ in a string": _body({"ad_ids": IDS}, request_id="a[b"),
    "an integer bid": _body({"ad_ids": IDS, "bids": [*BIDS[:-1], 2]}),
}

NOT_PLAIN = {
    "a float id": _body({"ad_ids": [*IDS[:-1], 1.5]}),
    "a whole float id": _body({"ad_ids": [*IDS[:-1], 2.0]}),
    "a bool id": _body({"ad_ids": [*IDS[:-1], True]}),
    "a string id": _body({"ad_ids": [*IDS[:-1], "7"]}),
    "a negative id": _body({"ad_ids": [*IDS[:-1], -3]}),
    "an id past int64": _body({"ad_ids": [*IDS[:-1], 2**63]}),
    "nested one-element arrays": _body({"ad_ids": [[i] for i in IDS]}),
    "a nested array": _body({"ad_ids": [*IDS[:-2], [IDS[-2], IDS[-1]]]}),
    "ad_ids twice": _body({"ad_ids": IDS}).replace(b'"ad_ids"', b'"ad_ids": [1], "ad_ids"', 1),
    "candidates twice": _body({"ad_ids": IDS}).replace(b'"candidates"', b'"candidates": {}, "candidates"', 1),
    "an escaped [ in a string": _body({"ad_ids": IDS}, request_id="x").replace(b'"x"', b'"\\u005b"'),
    "truncated JSON": _body({"ad_ids": IDS})[:-5],
    "not an object": json.dumps(IDS).encode(),
    "candidates not an object": json.dumps({"user": {"id": "u"}, "candidates": IDS}).encode(),
    "few ids": _body({"ad_ids": IDS[: FAST_MIN_IDS - 1]}),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_bodies_are_decoded_and_match_pydantic(name: str) -> None:
    body = PLAIN[name]
    assert _decoded_columns(body) is not None, "the plain form must take the column decoder"
    assert _outcome(parse_prerank, body) == _outcome(PrerankRequest.model_validate_json, body)


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_other_bodies_go_to_pydantic_with_its_errors(name: str) -> None:
    body = NOT_PLAIN[name]
    assert _decoded_columns(body) is None
    assert _outcome(parse_prerank, body) == _outcome(PrerankRequest.model_validate_json, body)


def test_escaped_brackets_agree_either_way() -> None:
    """An escaped '[' inside a string decodes to '[' on re-serialisation: the bracket count no
    longer matches, so it falls back (and pydantic's answer is the same either way)."""
    body = NOT_PLAIN["an escaped [ in a string"]
    assert parse_prerank(body).request_id == "["


def test_decoded_values_are_exact() -> None:
    req = parse_prerank(PLAIN["ids and bids"])
    assert req.candidates.ids.dtype == np.int64
    assert req.candidates.ids.tolist() == IDS
    assert req.candidates.bid_array is not None
    np.testing.assert_array_equal(req.candidates.bid_array, np.asarray(BIDS, np.float32))
    assert req.request_id == "r-1" and req.unknown_user == "reject"
