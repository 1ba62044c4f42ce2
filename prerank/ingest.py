"""`prerank ingest`: consume impression/click events into the online user store until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Sequence
from types import FrameType

from prerank.job import UsageError, job_parser, run_job
from storage import check_store, parse_store_url

__all__ = ["main", "parser"]

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = job_parser(
        "ingest",
        "Read impression and click events from the store's Redis Stream (prefix:user-events) with a consumer "
        "group and apply them to the online user store; run several for more throughput. Stops on SIGTERM/Ctrl-C.",
    )
    p.add_argument("--store", required=True, help="redis://[:password@]host:port/db")
    p.add_argument("--group", default="prerank-ingest", help="consumer group (default: prerank-ingest)")
    p.add_argument("--consumer", default=None, help="this consumer's name in the group (default: host-pid)")
    p.add_argument("--from-start", action="store_true", help="a new group reads the whole stream, not only new events")
    p.add_argument("--batch", type=int, default=500, help="events per read (default: 500)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--max-events", type=int, default=0, help="stop after this many events (0: run until stopped)")
    return p


def _run(args: argparse.Namespace) -> None:
    if parse_store_url(args.store).scheme != "redis":
        raise UsageError(f"ingest needs a redis:// store, got {args.store!r}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    check_store(args.store)
    import redis

    from service.ingest import Ingestor, IngestStats, KnownUsers, RedisStreamSource
    from storage import RedisKeys

    client = redis.Redis.from_url(args.store, socket_timeout=10)
    keys = RedisKeys()
    source = RedisStreamSource(client, keys, args.group, args.consumer, "0" if args.from_start else "$")
    ingestor = Ingestor(source, client, keys, KnownUsers(client, keys))
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    total = IngestStats()
    last_report = time.monotonic()
    print(f"ingesting {keys.user_events} as {source.group}/{source.consumer}", flush=True)
    while not stopping and not (
        args.max_events and total.applied + total.duplicates + total.dead_lettered >= args.max_events
    ):
        try:
            total.add(ingestor.step(args.batch, block_ms=500))
        except redis.RedisError as exc:  # nothing of the batch was acknowledged: it is read again
            log.warning("store error, retrying: %s", exc, extra={"event": "ingest_store_error"})
            source.reset()
            time.sleep(0.5)
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            log.info("ingest totals: %s", total, extra={"event": "ingest_progress"})
    print(f"applied {total.applied}, duplicates {total.duplicates}, dead-lettered {total.dead_lettered}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("ingest", parser(), _run, argv)
