"""The README's examples run as written: its request against the quick start's (synthetic) index,
and every documented `prerank` command parses with the job's own parser."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prerank import JOBS
from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _json_blocks() -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, flags=re.S)]


def test_readme_request_runs_against_the_quick_start_index(store: Path) -> None:
    request, response = _json_blocks()[:2]
    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        r = client.post("/prerank", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(response)  # the documented response has exactly the served fields
    assert body["user_known"] is response["user_known"] and body["unknown_ad_ids"] == response["unknown_ad_ids"]
    assert len(body["ad_ids"]) == request["top_k"] == len(response["ad_ids"])
    assert set(body["ad_ids"]) <= set(request["candidates"]["ad_ids"])


def _documented_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.split(r"\s+#\s", line)[0].strip()
            if line.startswith("prerank "):
                commands.append(shlex.split(line.replace("[", "").replace("]", ""))[1:])
    inline = re.findall(r"`(prerank [a-z-]+ [^`]*)`", README)
    commands += [shlex.split(c.replace("…", "x"))[1:] for c in inline if "JOB" not in c and "{" not in c]
    return commands


def test_the_readme_documents_commands() -> None:
    jobs = {c[0] for c in _documented_commands()}
    assert {"train", "export", "versions", "rollback", "serve", "bench", "zoo", "loadtest"} <= jobs


@pytest.mark.parametrize("argv", _documented_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_documented_command_parses(argv: list[str]) -> None:
    job, *flags = argv
    assert job in JOBS, f"README documents an unknown job {job!r}"
    flags = [f for f in flags if f != "..."]
    if flags and flags[0] in ("-h", "--help"):
        return
    module = importlib.import_module(f"prerank.{JOBS[job][0]}")
    if hasattr(module, "parser"):
        module.parser().parse_args(flags)  # SystemExit(2) on an unknown or malformed flag
    else:  # loadtest / soak keep their parsers in loadtest/
        inner = importlib.import_module(
            {
                "loadtest": "loadtest.run",
                "soak": "loadtest.soak",
                "openloop": "loadtest.openloop",
                "profile": "loadtest.profile",
            }[job]
        )
        inner.parser().parse_args(flags)
