"""Publishing to a local store: versions, pruning, atomicity, concurrent publishers."""

import os
import shutil
from pathlib import Path

import pytest

from models.artifact import ArtifactError, load_index
from offline.data.synthetic import make_synthetic
from offline.export import export


def test_export_publishes_and_failure_leaves_live_untouched(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    m1 = export(tiny_hit.artifact, tiny, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == m1["version"] == "v000001"
    index = load_index(root / "versions" / "v000001")
    assert (
        index.rows.vectors.shape
        == (
            len(tiny.ad_ids),
            2,
            16 + 2,
        )  # p + the folded linear part and index.manifest["model_version"] == m1["model_version"]
    )
    other = make_synthetic(n_users=50, n_ads=10, n_rows=500, seed=1)  # different vocabularies
    with pytest.raises(ArtifactError, match="vocabulary"):
        export(tiny_hit.artifact, other, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == "v000001"
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001"]  # no partial version left


def test_export_write_error_leaves_no_partial_version(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    export(tiny_hit.artifact, tiny, f"local:{root}")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hit.artifact, broken)
    os.chmod(broken / "weights.safetensors", 0)  # unreadable: the copy into the store fails
    if os.access(broken / "weights.safetensors", os.R_OK):  # running as root: remove instead
        (broken / "weights.safetensors").unlink()
    with pytest.raises((OSError, ArtifactError)):
        export(broken, tiny, f"local:{root}")
    assert (root / "CURRENT").read_text().strip() == "v000001"
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001"]


def test_export_keeps_the_last_versions(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    for _ in range(4):
        export(tiny_hit.artifact, tiny, f"local:{root}", dtype="bfloat16", keep=2)
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000003", "v000004"]
    assert load_index(root / "versions" / "v000004").rows.vectors.dtype.is_floating_point


def test_bad_store_url() -> None:
    from storage import parse_store_url

    with pytest.raises(ValueError, match="local:DIR or redis"):
        parse_store_url("s3://bucket")


def test_concurrent_local_publishers_get_distinct_intact_versions(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    root = tmp_path / "store"
    results: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            results.append(export(tiny_hit.artifact, tiny, f"local:{root}")["version"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == ["v000001", "v000002", "v000003", "v000004"]
    for v in results:
        assert load_index(root / "versions" / v).manifest["version"] == v
    assert (root / "CURRENT").read_text().strip() in results
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".staging")]


def test_the_default_keeps_the_last_five_versions(tiny, tiny_hit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "store"
    for _ in range(7):
        export(tiny_hit.artifact, tiny, f"local:{root}")  # keep not given: the documented default
    assert sorted(p.name for p in (root / "versions").iterdir()) == [f"v{i:06d}" for i in range(3, 8)]
    assert (root / "CURRENT").read_text().strip() == "v000007"
