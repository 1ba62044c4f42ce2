"""Request ids, JSON logs and OpenTelemetry traces for every request, in one ASGI middleware.

* Request id: `X-Request-ID` is accepted (1-128 characters of `[A-Za-z0-9._:-]`), generated when
  absent or malformed, echoed on the response and attached to every log line of the request.
* Logs: one JSON object per line (python-json-logger). Each request is logged at
  `PRERANK_LOG_SAMPLE_RATE` (errors always); lifecycle events (version loaded, refused, swapped,
  store errors) are logged by the follower through the same handler.
* Traces (off by default, `PRERANK_TRACING=otlp|console`): a server span per request, continuing
  the caller's W3C `traceparent`, with one child span per scoring stage (parse, features,
  user_tower, gather, score, sort) laid out from the stage timings the scorer measures anyway;
  `traceparent` goes back on the response so the ranking stage can continue the trace. When off,
  the request path does no tracing work at all.
* Metrics: requests, latency and in-flight by the matched route's template.
"""

from __future__ import annotations

import contextvars
import logging
import random
import re
import time
import uuid
from typing import Any

from service.metrics import IN_FLIGHT, LATENCY, REQUESTS, child

__all__ = ["REQUEST_ID", "ObservabilityMiddleware", "Tracing", "configure_logging", "record_stages"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("prerank.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str = "INFO", json_lines: bool = True) -> logging.Handler:
    """The server process's logging: every record as one JSON line on stderr, with `request_id`.

    Replaces the root logger's handlers (the server owns its process's logging); uvicorn's own
    loggers propagate here when uvicorn runs with `log_config=None`.
    """
    from pythonjsonlogger.json import JsonFormatter

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    return handler


class Tracing:
    """The OpenTelemetry tracer, or nothing (the default).

    Args:
        exporter: "none", "console", "otlp" (OTLP over HTTP; endpoint from the standard
            OTEL_EXPORTER_OTLP_ENDPOINT variable), or a ready SpanExporter (tests pass
            an InMemorySpanExporter).
    """

    def __init__(self, exporter: Any = "none", service_name: str = "prerank") -> None:
        self.tracer: Any = None
        self.provider: Any = None
        if exporter == "none":
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            processor: Any = SimpleSpanProcessor(ConsoleSpanExporter())
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
        else:
            processor = SimpleSpanProcessor(exporter)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("prerank")

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def record_stages(tracing: Tracing, started_ns: int, timings_ms: dict[str, float]) -> None:
    """Child spans of the current span, one per stage, laid end to end from `started_ns`.

    Gather and score run interleaved in cache-sized chunks; their spans carry the summed time.
    """
    if not tracing.enabled:
        return
    at = started_ns
    for stage in ("parse", "features", "user_tower", "retrieve", "gather", "score", "sort"):
        ms = timings_ms.get(stage)
        if ms is None:
            continue
        end = at + int(ms * 1e6)
        span = tracing.tracer.start_span(stage, start_time=at)
        span.end(end_time=end)
        at = end


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ObservabilityMiddleware:
    """Pure ASGI middleware: request id, sampled JSON access log, trace span, HTTP metrics."""

    def __init__(self, app: Any, tracing: Tracing | None = None, log_sample_rate: float = 1.0) -> None:
        self.app = app
        self.tracing = tracing or Tracing()
        self.log_sample_rate = log_sample_rate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given is not None and _VALID_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        started = time.perf_counter()
        span: Any = None
        if self.tracing.enabled:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            carrier = {"traceparent": _header(scope, b"traceparent") or ""}
            parent = TraceContextTextMapPropagator().extract(carrier)
            span = self.tracing.tracer.start_span(
                f"{scope['method']} {scope['path']}", context=parent, kind=trace.SpanKind.SERVER
            )
            span.set_attribute("request_id", request_id)
            ctx_token = context.attach(trace.set_span_in_context(span))
            scope["state"]["trace_span"] = span

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if span is not None:
                    sc = span.get_span_context()
                    headers.append((b"traceparent", f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01".encode()))
                message["headers"] = headers
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            code = str(status["code"])
            child(REQUESTS, route, code).inc()
            child(LATENCY, route, code).observe(elapsed)
            if span is not None:
                from opentelemetry import context

                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status["code"])
                span.end()
                context.detach(ctx_token)
            if status["code"] >= 400 or random.random() < self.log_sample_rate:
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status["code"],
                        "duration_ms": round(elapsed * 1e3, 3),
                        "request_id": request_id,
                    },
                )
            REQUEST_ID.reset(token)
