"""What every job shares: its parser, the error model, logging and torch threads.

User errors (a bad flag value, a missing file, an unreachable store, an artifact that does not
fit) end as one line on stderr with exit status 2; `-v` adds the traceback. Anything else is a
bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "PROTOCOLS",
    "UsageError",
    "add_data_args",
    "add_threads_arg",
    "job_parser",
    "json_arg",
    "json_object",
    "run_job",
    "stream_schema",
    "usable_cpus",
]

#: MovieLens protocols (offline.data.movielens.PROTOCOLS, repeated so `--help` needs no pandas;
#: a test keeps the two equal).
PROTOCOLS = ("paper", "clean", "paper-neutral")


class UsageError(Exception):
    """A user error found by a job's own checks."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        UsageError,
        ValueError,  # includes pydantic's ValidationError and models.artifact.ArtifactError
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        FileExistsError,
        ConnectionError,  # includes storage.StoreUnavailable
        TimeoutError,
    ]
    try:
        from redis import RedisError
    except ImportError:  # the serve/offline extras bring redis
        pass
    else:
        errors.append(RedisError)
    return tuple(errors)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def job_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of `prerank NAME`, with `-v` (debug logging and tracebacks)."""
    parser = argparse.ArgumentParser(prog=f"prerank {name}", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for errors")
    return parser


def add_threads_arg(parser: argparse.ArgumentParser, default: int | None = None, what: str = "torch") -> None:
    """`--threads N`: torch intra-op threads, set explicitly (default: every usable CPU)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"{what} intra-op threads (default: {default if default else 'every usable CPU'}); "
        "one busy neighbour on an oversubscribed core can slow training tenfold",
    )


def add_data_args(parser: argparse.ArgumentParser, default_dataset: str = "synthetic") -> None:
    """--dataset, --protocol, --data-dir, --split-seed."""
    parser.add_argument(
        "--dataset",
        default=default_dataset,
        help=f"movielens-1m, synthetic, synthetic:N_ADS or a schema file (.toml/.json) (default: {default_dataset})",
    )
    parser.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="MovieLens protocol (default: paper)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="dataset folder (default: $PRERANK_DATA_DIR/<dataset>, else ./data/<dataset>; "
        "schema file: its own folder)",
    )
    parser.add_argument("--split-seed", type=int, default=1023, help="seed of the 80/20 split (reference: 1023)")


def stream_schema(dataset: str) -> Path:
    """`--dataset` as the schema file a `--stream` job reads (a log split into files)."""
    if not dataset.endswith((".toml", ".json")):
        raise UsageError(f"--stream reads a schema file with [splits], got --dataset {dataset}")
    return Path(dataset)


def json_object(text: str) -> dict[str, object] | Path:
    """argparse type: a JSON object given inline, or the path of a .json file (read by `json_arg`
    when the job runs, so a missing file is a one-line job error and `--help` never reads files)."""
    import json

    if text.endswith(".json") and not text.lstrip().startswith("{"):
        return Path(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def json_arg(value: dict[str, object] | Path, flag: str) -> dict[str, object]:
    """The object of a `json_object` argument, reading the file it names."""
    import json

    if isinstance(value, dict):
        return value
    try:
        data = json.loads(value.read_text())
    except OSError as exc:
        raise UsageError(f"{flag} {value}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} {value}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {value}: must hold a JSON object")
    return data


def _one_line(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":  # pydantic: one clause per field
        try:
            parts = [f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}" for e in errors()]
        except (TypeError, KeyError):
            parts = []
        if parts:
            return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_job(
    name: str,
    parser: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], None],
    argv: Sequence[str] | None,
) -> int:
    """Parses `argv`, sets logging and torch threads, runs `handler` under the error model.

    The handler finds the arguments as given in `args.argv` (for reports that name their command).
    """
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = given
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    restore = None
    if hasattr(args, "threads"):
        if args.threads is not None and args.threads < 1:
            print(f"prerank {name}: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        restore = torch.get_num_threads()  # a job called in-process leaves its caller's setting alone
        args.threads = args.threads or usable_cpus()
        torch.set_num_threads(args.threads)
    try:
        handler(args)
    except _user_errors() as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"prerank {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prerank {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if restore is not None:
            import torch

            torch.set_num_threads(restore)
    return 0
