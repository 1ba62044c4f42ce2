"""Service settings, read from the environment (prefix PRERANK_) by pydantic-settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import parse_store_url

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the server; `create_app(Settings(...))` in tests, the environment in production."""

    model_config = SettingsConfigDict(env_prefix="PRERANK_", extra="ignore")

    store: str = Field(
        "local:store", description="index store: local:DIR, redis://[:password@]host:port/db, rediss:// for TLS"
    )
    artifact: str | None = Field(None, description="optional model artifact that must match the live index")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, cuda or cuda:N")
    torch_threads: int = Field(1, ge=1, description="intra-op threads for scoring")
    max_candidates: int = Field(20_000, ge=1, description="most candidate ads in one request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest accepted request body")
    max_id_length: int = Field(64, ge=1, description="longest accepted user id")
    poll_seconds: float = Field(2.0, gt=0, description="how often the live-version pointer is checked")
    max_concurrency: int = Field(2, ge=1, description="requests scored at once (each holds a torch thread)")
    user_batch: int = Field(
        0,
        ge=0,
        le=1024,
        description="encode the users of up to this many concurrent requests in one user-tower call "
        "(service/batching.py; pays on a GPU); 0: each request encodes its own user",
    )
    user_batch_window_us: float = Field(
        0.0, ge=0, le=10_000, description="how long a user-tower batch waits for more requests (0: never waits)"
    )
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond that, 503 + Retry-After")
    max_queue_ms: float | None = Field(
        None, gt=0, le=60_000, description="a request queued this long without a slot is shed (503); unset: no limit"
    )
    request_timeout_ms: float | None = Field(
        None, gt=0, le=60_000, description="default deadline; X-Request-Timeout-Ms overrides it per request"
    )
    tracing: str = Field(
        "none", pattern=r"^(none|console|otlp)$", description="trace exporter: none (off), console, or otlp"
    )
    log_sample_rate: float = Field(0.01, ge=0, le=1, description="fraction of requests logged (4xx/5xx: always)")
    log_json: bool = Field(True, description="log records as JSON lines")
    online_users: bool = Field(
        True, description="read each request's user from the online user store (redis:// stores; prerank ingest)"
    )
    online_timeout_ms: float = Field(
        20.0, gt=0, le=1000, description="timeout of one user-store round trip (online row and per-request features)"
    )
    user_cache_size: int = Field(
        100_000, ge=1, description="decoded user rows kept in memory for versions with a per-request user store"
    )
    memory_budget_mb: int = Field(
        4096, ge=0, description="most MiB of versions held at once: live + experiment arms + shadow (0: no limit)"
    )
    grpc_address: str | None = Field(
        None,
        pattern=r"^[^\s:]+:\d{1,5}$",
        description="serve gRPC (prerank.v1.Prerank, health, reflection) on HOST:PORT; unset: off",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for /admin/* (reload, pin, unpin); admin is disabled when unset"
    )

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        parse_store_url(value)  # ValueError naming the accepted forms
        return value
