from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from offline.cli import main


def test_cli_train_and_export_on_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "a"
    assert (
        main(
            [
                "train",
                "--model",
                "dssm",
                "--epochs",
                "1",
                "--out",
                str(art),
                "--no-progress",
                "--model-config",
                '{"temperature": 5}',
            ]
        )
        == 0
    )
    assert "dssm test AUC" in capsys.readouterr().out
    assert main(["export", str(art), "--store", f"local:{tmp_path / 's'}"]) == 0
    assert "published index v000001" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--model", "nope", "--epochs", "1", "--out", "X"], "unknown model 'nope'"),
        (["train", "--dataset", "nope", "--out", "X"], "unknown dataset 'nope'"),
        (["train", "--dataset", "movielens-1m", "--data-dir", "/nonexistent", "--out", "X"], "users.dat"),
        (["export", "/nonexistent", "--store", "local:X"], "missing meta.json"),
        (["export", "/nonexistent", "--store", "ftp://x"], "store URL must be"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(argv: list[str], needle: str, tmp_path: Path) -> None:
    argv = [a.replace("X", str(tmp_path / "x")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "offline.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
