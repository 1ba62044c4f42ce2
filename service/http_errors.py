"""The one place where errors become HTTP responses, in FastAPI's error shape.

Every 4xx/5xx body is `{"detail": [{"loc": [...], "msg": "...", "type": "..."}, ...]}`, listing
every problem found, as FastAPI's own validation errors do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from service.errors import (
    AdminDisabled,
    DeadlineExceeded,
    InvalidInput,
    MalformedBody,
    MissingCredentials,
    NeedsBroker,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Problem,
    ServiceError,
    StoreDown,
    UnknownUser,
    UnsupportedMediaType,
    VersionUnavailable,
    WrongCredentials,
)

__all__ = ["STATUS", "error_body", "install_error_handlers", "problems_from_pydantic"]

#: Status code per domain error class (the most specific class wins).
STATUS: dict[type[ServiceError], int] = {
    MalformedBody: 400,
    MissingCredentials: 401,
    AdminDisabled: 403,
    WrongCredentials: 403,
    UnknownUser: 404,
    VersionUnavailable: 409,
    NeedsBroker: 409,
    StoreDown: 503,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
}

_UNION_TAGS = ("str", "int", "float", "bool", "none")


def _clean_loc(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """A pydantic error location without union-branch tags such as `list[constrained-int]`."""
    return tuple(
        p for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p or p.startswith("constrained")))
    )


def problems_from_pydantic(errors: Sequence[Any], prefix: tuple[str, ...] = ("body",)) -> list[Problem]:
    """Every pydantic error as a Problem (location under `prefix`, union tags dropped, messages
    without pydantic's 'Value error, ' prefix); duplicates from union branches appear once."""
    out: list[Problem] = []
    seen: set[tuple[Any, ...]] = set()
    for e in errors:
        loc = _clean_loc(e.get("loc", ()))
        loc = loc if loc[: len(prefix)] == prefix else (*prefix, *loc)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        key = (loc, msg)
        if key not in seen:
            seen.add(key)
            out.append(Problem(loc, msg, str(e.get("type", "value_error"))))
    return out


def status_of(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_body(problems: Sequence[Problem]) -> bytes:
    return orjson.dumps({"detail": [p.as_dict() for p in problems]})


def _response(problems: Sequence[Problem], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(problems), status, headers, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers that turn domain and validation errors into responses."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> Response:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": "1"}
        return _response(exc.problems, status, headers)

    @app.exception_handler(ValidationError)
    async def _body_error(_: Request, exc: ValidationError) -> Response:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            first = next(e for e in errors if e["type"] == "json_invalid")
            return _response([Problem(("body",), f"body is not valid JSON: {first['msg']}", "json_invalid")], 400)
        return _response(problems_from_pydantic(errors), 422)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        """Framework errors (unknown route, wrong method, undecodable body) in the same shape."""
        kind = {400: "json_invalid", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        loc = ("body",) if exc.status_code == 400 else ("path",)
        return _response([Problem(loc, str(exc.detail), kind)], exc.status_code, dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        problems = problems_from_pydantic(exc.errors(), ()) or [Problem(("body",), "invalid request", "value_error")]
        if any(p.type == "json_invalid" for p in problems):
            return _response([p for p in problems if p.type == "json_invalid"], 400)
        return _response(problems, 422)
