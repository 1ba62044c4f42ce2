from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models.artifact import ArtifactError, load_artifact
from models.rows import AdRows


def test_artifact_roundtrip_gives_identical_scores(tiny, tiny_hit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bundle = load_artifact(tiny_hit.artifact)
    feats, _ = tiny.test.batch(np.arange(100))
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(feats), tiny_hit.model.eval()(feats), rtol=0, atol=0)
    meta = bundle.meta
    for key in ("model_version", "seed", "data_sha256", "code_version", "protocol", "dataset"):
        assert key in meta
    assert bundle.version.startswith("hit-")
    assert not list(tiny_hit.artifact.glob("*.pt")) and not list(tiny_hit.artifact.glob("*.pkl"))


def test_artifact_refuses_tampered_weights(tiny_hit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "a"
    shutil.copytree(tiny_hit.artifact, copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(copy)


def test_artifact_refuses_config_that_does_not_fit_weights(tiny_hit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "a"
    shutil.copytree(tiny_hit.artifact, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["config"]["heads"] = 4
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_artifact(copy)


def test_quantize_error_bounds() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 2, 16)
    bf16_rows = AdRows.quantize(x, "bfloat16")
    bf16, none = bf16_rows.vectors, bf16_rows.scales
    assert none is None and bf16.dtype == torch.bfloat16
    assert float((bf16.float() - x).abs().max()) <= float(x.abs().max()) * 2**-8
    int8_rows = AdRows.quantize(x, "int8")
    q, scales = int8_rows.vectors, int8_rows.scales
    assert q.dtype == torch.int8 and scales is not None and scales.shape == (1000,)
    err = (q.float() * scales[:, None, None] - x).abs().amax(dim=(1, 2))
    assert bool((err <= scales / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="vector dtype"):
        AdRows.quantize(x, "float16")


def test_a_vocabulary_builds_its_token_map_only_when_it_encodes(store) -> None:  # type: ignore[no-untyped-def]
    """A server encodes user-side values only: it drops the vocabularies only ad fields use (10M
    ad ids: ~650 MB of strings) and builds the token maps of the rest before any request. Elsewhere
    a map is built on first encode. Unique tokens are still checked on load, sorted or not."""
    from models.features import Vocabulary
    from service.store import open_store

    for tokens in (["a", "b", "c"], ["10", "9", "100"]):
        vocab = Vocabulary(tokens)
        assert "_index" not in vocab.__dict__
        assert vocab.encode([tokens[1], "zz"]).tolist() == [2, 0] and "_index" in vocab.__dict__
    for duplicated in (["a", "b", "b"], ["b", "a", "b"]):
        with pytest.raises(ValueError, match="unique"):
            Vocabulary(duplicated)
    served = open_store(f"local:{store}")
    current = served.current()
    assert current is not None
    bundle = served.load(current).bundle  # the server's load path
    user_vocabs = {f.vocab for f in bundle.schema.user_fields}
    ad_only = {f.vocab for f in bundle.schema.ad_fields} - user_vocabs
    assert ad_only == {"ad_id", "advertiser"} and not ad_only & set(bundle.vocabs)
    assert "category" in bundle.vocabs  # shared with the user's preferred_categories
    assert all("_index" in bundle.vocabs[v].__dict__ for v in user_vocabs if v)  # built before any request
