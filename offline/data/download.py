"""Download of the official MovieLens-1M archive (for users with a network)."""

from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from pathlib import Path

from offline.data.movielens import OFFICIAL_URL

__all__ = ["download_movielens"]

OFFICIAL_MD5 = "c4d9eecfca2ab87c1945afe126590906"


def download_movielens(data_dir: Path, url: str = OFFICIAL_URL) -> Path:
    """Fetches ml-1m.zip, checks its md5 and extracts ratings.dat, users.dat, movies.dat into `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "ml-1m.zip"
    if not archive.exists():
        tmp = archive.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.rename(archive)
    digest = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != OFFICIAL_MD5:
        raise ValueError(f"{archive} has md5 {digest}, expected {OFFICIAL_MD5}; delete it and retry")
    with zipfile.ZipFile(archive) as zf:
        for name in ("ratings.dat", "users.dat", "movies.dat", "README"):
            (data_dir / name).write_bytes(zf.read(f"ml-1m/{name}"))
    return data_dir
