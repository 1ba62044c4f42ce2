"""Generated blocks inside hand-written markdown files (standard library only)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["splice"]


def splice(path: Path, name: str, block: str, title: str | None = None) -> None:
    """Replaces the text between `<!-- NAME -->` and `<!-- /NAME -->` in `path` with `block`.

    The markers are appended when absent; a missing file is created (under `# title` if given).
    Everything outside the markers is kept as written.
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    header = f"# {title}\n\n" if title else ""
    text = path.read_text() if path.exists() else header
    if start not in text or end not in text:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{block.strip()}\n{end}{tail}")
