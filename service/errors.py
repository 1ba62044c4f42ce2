"""Domain errors of the service. None of them knows HTTP: `service/http_errors.py` maps each
class to a status code and FastAPI's error shape, in one place.

Every error carries one or more problems, each with a location (`loc`, e.g.
`("body", "candidates", "ad_ids")`), a message and a machine-readable type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AdminDisabled",
    "DeadlineExceeded",
    "InvalidInput",
    "MalformedBody",
    "MissingCredentials",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "Problem",
    "ServiceError",
    "UnknownUser",
    "UnsupportedMediaType",
    "VersionUnavailable",
    "WrongCredentials",
]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where, what, and its type (FastAPI's `{loc, msg, type}`)."""

    loc: Loc
    msg: str
    type: str

    def as_dict(self) -> dict[str, object]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class ServiceError(Exception):
    """Base of every domain error; `problems` lists all that is wrong, not only the first."""

    kind = "service_error"

    def __init__(self, loc: Loc | str, msg: str, *, more: Sequence[Problem] = ()) -> None:
        where = tuple(loc.split(".")) if isinstance(loc, str) else loc
        self.problems: tuple[Problem, ...] = (Problem(where, msg, self.kind), *more)
        super().__init__("; ".join(f"{'.'.join(str(p) for p in x.loc)}: {x.msg}" for x in self.problems))

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> ServiceError:
        """One error carrying several problems (all of the same class)."""
        first, *rest = problems
        return cls(first.loc, first.msg, more=rest)


class InvalidInput(ServiceError):
    """A field of the request is invalid (wrong type, out of range, not a feature of the model)."""

    kind = "value_error"


class MalformedBody(InvalidInput):
    """The body is not JSON at all."""

    kind = "json_invalid"


class UnknownUser(ServiceError):
    """The user is not in the feature store and the request asked to reject unknown users."""

    kind = "unknown_user"


class NotReady(ServiceError):
    """No model/index version is loaded yet."""

    kind = "not_ready"


class VersionUnavailable(ServiceError):
    """The version asked for cannot be served (missing, refused, or lacking what the call needs)."""

    kind = "version_unavailable"


class Overloaded(ServiceError):
    """Every scoring slot is busy and the queue is full: the request is shed."""

    kind = "overloaded"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before scoring could start; the work was abandoned."""

    kind = "deadline_exceeded"


class PayloadTooLarge(ServiceError):
    """The body is larger than the configured limit."""

    kind = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """The body is not declared as JSON."""

    kind = "unsupported_media_type"


class MissingCredentials(ServiceError):
    """An admin call without a bearer token."""

    kind = "missing_credentials"


class WrongCredentials(ServiceError):
    """An admin call with a wrong token."""

    kind = "wrong_credentials"


class AdminDisabled(ServiceError):
    """Admin calls are disabled (no token configured)."""

    kind = "admin_disabled"


class NeedsBroker(ServiceError):
    """The operation needs a Redis store (its events reach every replica); this one follows a directory."""

    kind = "needs_redis_store"


class StoreDown(ServiceError):
    """The store did not answer; nothing was changed."""

    kind = "store_unavailable"
