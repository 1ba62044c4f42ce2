"""The gRPC endpoint (prerank.v1.Prerank/Rank) beside the HTTP API, over the same scorer.

It runs on the server's event loop (grpc.aio), takes a scoring slot from the same admission
control as HTTP (so overload sheds both alike), scores in the same thread pool, and maps the
domain errors to gRPC status codes with the message naming the field. The standard health service
answers SERVING once a version is loaded; server reflection lists the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import anyio.to_thread
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from service.admission import Admission
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    Overloaded,
    ServiceError,
    UnknownUser,
    VersionUnavailable,
)
from service.experiments import observe_arm
from service.metrics import observe_result
from service.proto import prerank_pb2, prerank_pb2_grpc
from service.schemas import Candidates, PrerankRequest, UserInput
from service.scorer import Scorer, ScoreResult

__all__ = ["GrpcServer", "to_request"]

log = logging.getLogger(__name__)

SERVICE = prerank_pb2.DESCRIPTOR.services_by_name["Prerank"].full_name

#: gRPC status per domain error class (the most specific class wins), as service.http_errors does for HTTP.
GRPC_STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    UnknownUser: grpc.StatusCode.NOT_FOUND,
    VersionUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _status(error: ServiceError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _message(error: ServiceError) -> str:
    return "; ".join(".".join(str(p) for p in problem.loc) + ": " + problem.msg for problem in error.problems)


def _feature(value: prerank_pb2.FeatureValue) -> object:
    kind = value.WhichOneof("kind")
    if kind == "ids":
        return list(value.ids.values)
    return getattr(value, kind) if kind else None


def _le(raw: bytes, dtype: str, where: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of {size}-byte values")
    return np.frombuffer(raw, dtype=dtype)


def to_request(message: prerank_pb2.RankRequest) -> PrerankRequest:
    """The HTTP API's request model from the protobuf one (the same checks; ValueError names the field)."""
    try:
        if message.ad_ids_le or message.bids_le:
            if message.ad_ids or message.bids:
                raise ValueError("candidates: send ad_ids/bids or ad_ids_le/bids_le, not both")
            ids = _le(message.ad_ids_le, "<i8", "candidates.ad_ids_le").astype(np.int64)
            bids = _le(message.bids_le, "<f4", "candidates.bids_le") if message.bids_le else None
        else:
            ids = np.array(message.ad_ids, dtype=np.int64)
            bids = np.array(message.bids, dtype=np.float64) if message.bids else None
        candidates = Candidates.from_arrays(ids, bids)
    except ValueError as exc:
        raise InvalidInput(("candidates",), str(exc)) from None
    try:
        user = UserInput.model_validate(
            {
                "id": message.user.id or None,
                "features": {k: _feature(v) for k, v in message.user.features.items()},
            }
        )
        return PrerankRequest.model_construct(
            request_id=message.request_id or None,
            user=user,
            candidates=candidates,
            top_k=message.top_k or None,
            unknown_user="reject" if message.reject_unknown_user else "defaults",
        )
    except ValidationError as exc:
        problems = "; ".join(".".join(str(p) for p in ("user", *e["loc"])) + ": " + e["msg"] for e in exc.errors())
        raise InvalidInput(("user",), problems) from None


def to_response(result: ScoreResult, request_id: str | None, binary: bool = False) -> prerank_pb2.RankResponse:
    """The protobuf answer: repeated columns, or little-endian byte columns with `binary`."""
    out = prerank_pb2.RankResponse(
        request_id=request_id or "",
        model_version=result.version.model_version,
        index_version=result.version.version,
        delta_seq=result.version.delta_seq,
        user_known=result.user_known,
        user_event=result.user_event or "",
        experiment=result.experiment or "",
        arm=result.arm or "",
    )
    if binary:
        out.ad_ids_le = result.ad_ids.astype("<i8").tobytes()
        out.pctr_le = result.pctr.astype("<f4").tobytes()
        out.ecpm_le = result.ecpm.astype("<f4").tobytes()
        out.unknown_ad_ids_le = result.unknown_ad_ids.astype("<i8").tobytes()
    else:
        out.ad_ids.extend(result.ad_ids.tolist())
        out.pctr.extend(result.pctr.tolist())
        out.ecpm.extend(result.ecpm.tolist())
        out.unknown_ad_ids.extend(result.unknown_ad_ids.tolist())
    return out


class PrerankServicer(prerank_pb2_grpc.PrerankServicer):  # type: ignore[misc]
    def __init__(self, scorer: Scorer, admission: Admission, max_candidates: int) -> None:
        self.scorer, self.admission, self.max_candidates = scorer, admission, max_candidates

    async def Rank(
        self, request: prerank_pb2.RankRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> prerank_pb2.RankResponse:
        try:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            async with self.admission.slot(deadline):
                parsed = to_request(request)
                n = len(parsed.candidates.ids)
                if n > self.max_candidates:
                    raise InvalidInput(
                        ("candidates", "ad_ids"), f"{n} candidates exceeds the limit of {self.max_candidates}"
                    )
                result = await anyio.to_thread.run_sync(self.scorer.prerank, parsed)
        except ServiceError as exc:
            await context.abort(_status(exc), _message(exc))
            raise  # unreachable: abort raises
        observe_result(result.timings_ms, n, len(result.unknown_ad_ids), result.user_known, result.pctr)
        if result.arm is not None:
            observe_arm(result)
        shadow = self.scorer.shadow
        if shadow is not None:
            shadow.offer(parsed, result)
        return to_response(result, parsed.request_id, request.binary_response)


class GrpcServer:
    """A grpc.aio server with the Prerank, health and reflection services."""

    def __init__(self, scorer: Scorer, admission: Admission, max_candidates: int, address: str) -> None:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        prerank_pb2_grpc.add_PrerankServicer_to_server(PrerankServicer(scorer, admission, max_candidates), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(address)
        self.scorer = scorer
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._watch = asyncio.create_task(self._serving_status())
        log.info("gRPC on port %d", self.port, extra={"event": "grpc_started"})

    async def _serving_status(self) -> None:
        """SERVING (overall and for the Prerank service) while a version is loaded."""
        last = None
        while True:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.scorer.live
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if status != last:
                for name in ("", SERVICE):
                    await self.health.set(name, status)
                last = status
            await asyncio.sleep(0.5)

    async def stop(self, grace: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
