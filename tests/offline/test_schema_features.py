"""Schema-file features: shared vocabularies, min_count/OOV, hashed ids, dense normalisation and
bucketing, sequence pooling and truncation, and the schema's own validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from models.artifact import load_artifact
from models.features import HashedVocabulary, Jagged, Vocabulary
from models.layers import IdDrift, IdMatch, IdPairs
from models.registry import MODELS, build_model
from offline.data import load_dataset
from offline.export import export
from offline.train import TrainConfig, predict, train
from prerank.cli import main
from service.app import create_app
from service.config import Settings

BASE = """
files = "rows.csv"
user_key = "u"
ad_key = "a"
label = "y"
"""


def _frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "u": rng.integers(0, 60, n),
            "a": rng.integers(0, 40, n),
            "cat": rng.integers(0, 8, n),
            "tags": ["|".join(map(str, rng.integers(0, 8, rng.integers(0, 7)))) for _ in range(n)],
            "price": rng.lognormal(2.0, 1.0, n).round(3),
            "age": rng.integers(18, 70, n),
            "y": rng.integers(0, 2, n),
        }
    )


def _schema(tmp_path: Path, features: str, frame: pd.DataFrame | None = None) -> str:
    (frame if frame is not None else _frame()).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "s.toml").write_text(BASE + features)
    return str(tmp_path / "s.toml")


SHARED = """
[[features]]
column = "u"
side = "user"
kind = "sparse"
[[features]]
column = "tags"
side = "user"
kind = "sequence"
vocab = "category"
max_len = 3
[[features]]
column = "age"
side = "user"
kind = "dense"
buckets = 4
[[features]]
column = "a"
side = "ad"
kind = "sparse"
[[features]]
column = "cat"
side = "ad"
kind = "sparse"
vocab = "category"
[[features]]
column = "price"
side = "ad"
kind = "dense"
normalize = true
"""


def _tables(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Field -> embedding weight (the LR part's width-1 tables, their own sharing, left out)."""
    return {
        name: module.weight
        for m in net.modules()
        if hasattr(m, "tables")
        for name, module in m.tables.items()
        if module.weight.shape[1] > 1
    }


@pytest.mark.parametrize("model", ["hit", "dssm", "inttower", "fit", "cold", "dcn"])
def test_a_shared_vocabulary_is_one_embedding_table_across_the_towers(tmp_path: Path, model: str) -> None:
    ds = load_dataset(_schema(tmp_path, SHARED))
    specs = {f.name: f for f in ds.schema.features}
    assert specs["tags"].vocab == specs["cat"].vocab == "category" and "tags" not in ds.vocabs
    net = build_model(model, ds.schema, {})
    tables = _tables(net)
    assert tables["tags"] is tables["cat"]  # one tensor, trained by both fields
    assert len({id(t) for t in tables.values()}) == len(tables) - 1
    n_unique = sum(p.numel() for p in net.parameters())
    assert n_unique < sum(p.numel() for _, p in net.named_parameters(remove_duplicate=False))
    # the artifact stores it once and loads it back shared, with identical predictions
    result = train(ds, model, {}, TrainConfig(epochs=1, batch_size=128, progress=False), tmp_path / "art")
    bundle = load_artifact(tmp_path / "art")
    loaded = _tables(bundle.model)
    assert loaded["tags"] is loaded["cat"]
    np.testing.assert_allclose(predict(bundle.model, ds.test), predict(result.model, ds.test), rtol=1e-6)


def test_min_count_sends_rare_values_to_the_oov_id(tmp_path: Path) -> None:
    frame = _frame()
    frame["a"] = frame["a"] % 10  # ten ads with ~60 rows each ...
    frame.loc[:5, "a"] = 999  # ... and one rare ad id, 6 rows in all
    text = SHARED.replace(
        'column = "a"\nside = "ad"\nkind = "sparse"', 'column = "a"\nside = "ad"\nkind = "sparse"\nmin_count = 20'
    )
    ds = load_dataset(_schema(tmp_path, text, frame))
    vocab = ds.vocabs["a"]
    assert vocab.encode_one("999") == 0  # rarer than 20 in the training rows: the OOV id
    assert sorted(vocab.tokens) == [str(i) for i in range(10)]
    assert (ds.ads.sparse["a"] == 0).sum() == 1 and (ds.ads.sparse["a"] > 0).sum() == 10
    # the schema without min_count keeps it
    plain = load_dataset(_schema(tmp_path, SHARED, frame))
    assert plain.vocabs["a"].encode_one("999") > 0


def test_hashed_ids_are_stable_buckets_and_round_trip_the_artifact(tmp_path: Path) -> None:
    text = SHARED.replace(
        'column = "u"\nside = "user"\nkind = "sparse"',
        'column = "u"\nside = "user"\nkind = "sparse"\nhash_buckets = 16',
    )
    ds = load_dataset(_schema(tmp_path, text))
    vocab = ds.vocabs["u"]
    assert isinstance(vocab, HashedVocabulary) and len(vocab) == 16 == ds.schema.vocab_sizes["u"]
    ids = ds.users.sparse["u"]
    assert ids.min() >= 1 and ids.max() <= 16 and len(np.unique(ids)) > 8
    assert vocab.encode_one("never seen") == HashedVocabulary(16).encode_one("never seen") >= 1  # no OOV
    train(ds, "dssm", {}, TrainConfig(epochs=1, batch_size=128, progress=False), tmp_path / "art")
    assert isinstance(load_artifact(tmp_path / "art").vocabs["u"], HashedVocabulary)
    assert Vocabulary.from_json(vocab.to_json()).encode_one("x") == vocab.encode_one("x")


def test_dense_normalisation_bucketing_and_sequence_truncation(tmp_path: Path) -> None:
    frame = _frame()
    ds = load_dataset(_schema(tmp_path, SHARED, frame))
    specs = {f.name: f for f in ds.schema.features}
    mean, std = specs["price"].normalize  # type: ignore[misc]
    assert 5 < mean < 20 and std > 0  # lognormal(2, 1): fitted on the training rows
    assert ds.ads.dense["price"].max() > 20  # stored raw: the model standardises it
    age = specs["age"]
    assert age.kind.value == "sparse" and age.boundaries is not None and len(age.boundaries) == 3
    assert ds.schema.vocab_sizes["age"] == 4
    assert set(np.unique(ds.users.sparse["age"])) <= {1, 2, 3, 4}
    assert age.bucketize([-1.0, 1e9, float("nan")]).tolist() == [1, 4, 0]
    values, offsets = ds.users.sequences["tags"]
    lengths = np.diff(offsets)
    assert lengths.max() == 3 and (values > 0).all()  # truncated to max_len, unknown tokens dropped
    # most recent kept: the last 3 of "1|2|3|4|5" in the file's (oldest-first) order
    assert specs["tags"].truncate(np.array([1, 2, 3, 4, 5])).tolist() == [3, 4, 5]


def test_sum_pooling_differs_from_mean_pooling(tmp_path: Path) -> None:
    ds_mean = load_dataset(_schema(tmp_path, SHARED))
    ds_sum = load_dataset(_schema(tmp_path, SHARED.replace("max_len = 3", 'max_len = 3\npooling = "sum"')))
    torch.manual_seed(0)
    a = build_model("dssm", ds_mean.schema, {})
    torch.manual_seed(0)
    b = build_model("dssm", ds_sum.schema, {})
    feats, _ = ds_mean.train.batch(np.arange(64))
    emb_a = a.user_embedding.embed(feats, ["tags"])[0]
    emb_b = b.user_embedding.embed(feats, ["tags"])[0]
    lengths = torch.from_numpy(np.diff(ds_mean.train.users.sequences["tags"][1])[ds_mean.train.user_rows[:64]])
    torch.testing.assert_close(emb_b, emb_a * lengths.clamp(min=1).unsqueeze(1).float())


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_recency_pooling_weighs_each_id_by_its_position_back_from_the_newest(newest_first: bool, shared: bool) -> None:
    from models.features import FeatureSchema, FeatureSpec, Jagged, Kind, Side
    from models.layers import FieldEmbedding

    seq = FeatureSpec("h", Side.USER, Kind.SEQUENCE, vocab="c", pooling="recency", max_len=3, newest_first=newest_first)
    fields = (seq, FeatureSpec("c", Side.USER, Kind.SPARSE, vocab="c")) if shared else (seq,)
    layer = FieldEmbedding(fields, FeatureSchema(fields, {"c": 5}), 4)
    # an EmbeddingBag with per-sample weights alone, the segment-sum path when the table is shared
    assert isinstance(layer.tables["h"], torch.nn.EmbeddingBag) != shared
    table = torch.arange(24.0).view(6, 4)
    with torch.no_grad():
        layer.recency["h"].copy_(torch.tensor([1.0, 10.0, 100.0]))  # newest, second newest, older
        layer.tables["h"].weight.copy_(table)
    # rows: [1, 2], [], [3, 4, 5, 2] (longer than max_len: positions past it share the last weight)
    values = torch.tensor([1, 2, 3, 4, 5, 2])
    pooled = layer.embed({"h": Jagged(values, torch.tensor([0, 2, 2]))}, ["h"])[0]
    w = (
        (lambda n: torch.tensor([1.0, 10.0, 100.0, 100.0][:n]))
        if newest_first
        else (lambda n: torch.tensor([1.0, 10.0, 100.0, 100.0][:n]).flip(0))
    )
    expected = torch.stack([w(2) @ table[[1, 2]], torch.zeros(4), w(4) @ table[[3, 4, 5, 2]]])
    torch.testing.assert_close(pooled, expected)
    pooled.sum().backward()
    assert layer.recency["h"].grad is not None and layer.recency["h"].grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("model", "model_config", "pooling"),
    [
        ("dssm", {}, "mean"),
        ("hit", {"linear": True, "wide": ["u", "a"]}, "recency"),
        ("hit", {"linear": True, "wide": ["u", "a"], "vocab_dot": True}, "recency"),
    ],
)
def test_served_pctr_applies_buckets_truncation_and_normalisation_like_training(
    tmp_path: Path, model: str, model_config: dict[str, object], pooling: str
) -> None:
    ds = load_dataset(_schema(tmp_path, SHARED.replace("max_len = 3", f'max_len = 3\npooling = "{pooling}"')))
    cfg = TrainConfig(epochs=1, batch_size=128, progress=False)
    result = train(ds, model, model_config, cfg, tmp_path / "art")
    assert result.artifact is not None
    export(result.artifact, ds, f"local:{tmp_path / 'store'}")
    # a user row as the server receives it: raw values, a long history (newest last), a raw age
    history = ["7", "7", "6", "1", "2", "3"]
    features = {"u": "3", "tags": history, "age": 44}
    with TestClient(create_app(Settings(store=f"local:{tmp_path / 'store'}", poll_seconds=60))) as client:
        ad_ids = ds.ad_ids[:20].tolist()
        r = client.post(
            "/prerank", json={"user": {"features": features}, "candidates": {"ad_ids": ad_ids}, "top_k": 20}
        )
        assert r.status_code == 200, r.text
        served = dict(zip(r.json()["ad_ids"], r.json()["pctr"], strict=True))
        bad = client.post(
            "/prerank", json={"user": {"features": {**features, "age": "old"}}, "candidates": {"ad_ids": ad_ids}}
        )
        assert bad.status_code == 422 and "age" in bad.text
    # the same row encoded offline: bucketed age, the last 3 known tokens, standardised price (in the model)
    spec = {f.name: f for f in ds.schema.features}
    vocab = ds.vocabs["category"]
    tags = spec["tags"].truncate(vocab.encode(history))
    feats = {
        "u": torch.tensor([ds.vocabs["u"].encode_one("3")]),
        "tags": __import__("models.features", fromlist=["Jagged"]).Jagged(
            torch.from_numpy(tags), torch.zeros(1, dtype=torch.int64)
        ),
        "age": torch.from_numpy(spec["age"].bucketize([44])),
    }
    net = result.model.eval()
    ad_rows = np.array([np.flatnonzero(ds.ad_ids == a)[0] for a in ad_ids])
    ad_feats = ds.ads.take(ad_rows)
    with torch.inference_mode():
        logits = net.score(net.encode_user(feats), net.encode_ad(ad_feats))
    offline = torch.sigmoid(logits.reshape(-1)).numpy()
    np.testing.assert_allclose([served[a] for a in ad_ids], offline, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("features", "needle"),
    [
        (
            '[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\ncolour = "red"\n',
            "unknown key: features[0].colour (column 'u')",
        ),
        (
            '[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\nmin_count = "many"\n',
            "features[0].min_count (column 'u'): Input should be a valid integer",
        ),
        (
            '[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\nnormalize = true\n',
            "['normalize'] apply to dense features only",
        ),
        (
            '[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\n'
            '[[features]]\ncolumn = "nope"\nside = "ad"\nkind = "sparse"\n',
            "columns ['nope'] not in ['rows.csv']",
        ),
        (
            '[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\nvocab = "x"\nmin_count = 2\n'
            '[[features]]\ncolumn = "a"\nside = "ad"\nkind = "sparse"\nvocab = "x"\n',
            "must agree on min_count",
        ),
        ('[[features]]\ncolumn = "u"\nside = "user"\nkind = "sparse"\n', "needs at least one ad feature"),
        (
            '[[features]]\ncolumn = "tags"\nside = "user"\nkind = "sequence"\npooling = "recency"\n',
            "recency pooling needs max_len",
        ),
    ],
)
def test_schema_errors_are_one_line_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], features: str, needle: str
) -> None:
    schema = _schema(tmp_path, features)
    assert main(["train", "--dataset", schema, "--out", str(tmp_path / "o"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_files_given_as_one_string_is_one_file(tmp_path: Path) -> None:
    ds = load_dataset(_schema(tmp_path, SHARED))  # BASE writes files = "rows.csv"
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 600


def test_every_model_trains_with_every_schema_feature(tmp_path: Path) -> None:
    text = SHARED.replace("max_len = 3", 'max_len = 3\npooling = "sum"')
    text = text.replace(
        'column = "u"\nside = "user"\nkind = "sparse"', 'column = "u"\nside = "user"\nkind = "sparse"\ndim = 8'
    )
    ds = load_dataset(_schema(tmp_path, text))
    assert {f.name: f.dim for f in ds.schema.features}["u"] == 8
    for model in sorted(MODELS):
        result = train(ds, model, {}, TrainConfig(epochs=1, batch_size=128, progress=False))
        assert np.isfinite(result.metrics["test_logloss"]), model


def test_the_readme_documents_every_schema_key_with_an_example_that_validates(tmp_path: Path) -> None:
    from offline.data.tabular import ColumnSpec, TableSpec, read_table_spec

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Your own data: a schema file") :]
    example = section[section.index("```toml\n") + 8 : section.index("```", section.index("```toml\n") + 8)]
    (tmp_path / "example.toml").write_text(example)
    spec = read_table_spec(tmp_path / "example.toml")
    assert spec.files == (tmp_path / "impressions.parquet",) and len(spec.features) == 8
    table = section[: section.index("### Data protocols")]
    for key in ColumnSpec.model_fields:
        assert f"| `{key}` |" in table, key
    for key in set(TableSpec.model_fields) - {"features", "splits"}:
        assert f"{key} =" in example, key
    assert "`[splits]`" in table and "[splits]\ntrain = " in readme  # the other way to name the files
    assert "[[features]]" in example


def test_weights_with_separate_tables_do_not_load_into_a_shared_table(tmp_path: Path) -> None:
    import json as _json

    from models.artifact import ArtifactError

    ds = load_dataset(_schema(tmp_path, SHARED))
    train(ds, "dssm", {"share_tables": False}, TrainConfig(epochs=1, batch_size=128, progress=False), tmp_path / "a")
    separate = _tables(load_artifact(tmp_path / "a").model)
    assert separate["tags"] is not separate["cat"]
    config = _json.loads((tmp_path / "a" / "config.json").read_text())
    config["config"]["share_tables"] = True  # as an artifact from before tables were shared would read
    (tmp_path / "a" / "config.json").write_text(_json.dumps(config))
    with pytest.raises(ArtifactError, match="separate tables"):
        load_artifact(tmp_path / "a")


def test_latest_validation_rows_come_after_every_training_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """valid = "latest": the validation rows are the latest 1/8 of the non-test rows in time (out-of-time
    validation), not a random 1/8; it needs a timestamp."""
    frame = _frame().assign(ts=np.random.default_rng(1).permutation(600))  # the file is not in time order
    features = SHARED.replace("[[features]]", 'timestamp = "ts"\n[[features]]', 1)
    split = {}
    for how in ("random", "latest"):
        schema = _schema(tmp_path, features.replace('timestamp = "ts"', f'timestamp = "ts"\nvalid = "{how}"'), frame)
        ds = load_dataset(schema)
        assert (len(ds.valid), len(ds.test)) == (60, 120) and ds.info["valid"] == how
        split[how] = ds
    from offline.data.tabular import split_rows

    train, valid, test = split_rows(600, True, 1023, latest_valid=True)
    assert train.max() < valid.min() and valid.max() < test.min() and len(valid) == 60  # in time order
    train_r, valid_r, _ = split_rows(600, True, 1023)
    assert valid_r.min() < train_r.max()  # the random 1/8 lies inside the training period
    assert not np.array_equal(split["random"].valid.labels, split["latest"].valid.labels)
    no_time = _schema(tmp_path, SHARED.replace("[[features]]", 'valid = "latest"\n[[features]]', 1))
    assert main(["train", "--dataset", no_time, "--out", str(tmp_path / "o"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'valid = "latest" needs a timestamp column' in err and len(err.splitlines()) == 1, err


def _serve_each(
    tmp_path: Path, artifact: Path, ds: Any, users: dict[Any, dict[str, Any]]
) -> dict[Any, dict[str, float]]:
    """Exports the artifact and POSTs /prerank once per user's raw features, over the dataset's
    first 20 ads: key -> {ad id: served pCTR}."""
    export(artifact, ds, f"local:{tmp_path / 'store'}")
    ad_ids = ds.ad_ids[:20].tolist()
    served = {}
    with TestClient(create_app(Settings(store=f"local:{tmp_path / 'store'}", poll_seconds=60))) as client:
        for key, features in users.items():
            body = {"user": {"features": features}, "candidates": {"ad_ids": ad_ids}, "top_k": 20}
            r = client.post("/prerank", json=body)
            assert r.status_code == 200, r.text
            served[key] = dict(zip(r.json()["ad_ids"], r.json()["pctr"], strict=True))
    return served


@pytest.mark.parametrize("model", ["hit", "dcn"])
def test_served_drift_reads_the_request_time_like_training(tmp_path: Path, model: str) -> None:
    """A model with per-ad slopes on a context time field serves them: the server standardises the
    request's raw `ts` as training did, and the pCTR of two requests that differ only in `ts` moves
    as the offline model's does (tested to 1e-6, so a dropped term would show)."""
    frame = _frame().assign(ts=np.arange(600) * 10.0)
    time_field = '[[features]]\ncolumn = "ts"\nside = "context"\nkind = "dense"\nnormalize = true\n'
    ds = load_dataset(_schema(tmp_path, SHARED + time_field, frame))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, progress=False, calibration="none")
    result = train(ds, model, {"drift": ["ts"]}, cfg, tmp_path / "art")
    drift = result.model.drift
    assert result.artifact is not None and isinstance(drift, IdDrift)
    slopes = drift.slopes.tables["a"].weight
    assert slopes.abs().max() > 0.01  # trained away from their near-zero start
    served = _serve_each(
        tmp_path, result.artifact, ds, {ts: {"u": "3", "tags": ["1"], "age": 30, "ts": ts} for ts in (1000.0, 9000.0)}
    )
    ad_ids = ds.ad_ids[:20].tolist()
    spec = {f.name: f for f in ds.schema.features}
    net = result.model.eval()
    ad_feats = ds.ads.take(np.array([np.flatnonzero(ds.ad_ids == a)[0] for a in ad_ids]))
    for ts in (1000.0, 9000.0):
        feats = {
            "u": torch.tensor([ds.vocabs["u"].encode_one("3")]),
            "tags": __import__("models.features", fromlist=["Jagged"]).Jagged(
                torch.from_numpy(spec["tags"].truncate(ds.vocabs["category"].encode(["1"]))),
                torch.zeros(1, dtype=torch.int64),
            ),
            "age": torch.from_numpy(spec["age"].bucketize([30])),
            "ts": torch.tensor([ts]),
        }
        with torch.inference_mode():
            offline = torch.sigmoid(net.score(net.encode_user(feats), net.encode_ad(ad_feats)).reshape(-1)).numpy()
        np.testing.assert_allclose([served[ts][a] for a in ad_ids], offline, rtol=1e-5, atol=1e-6)
    assert max(abs(served[1000.0][a] - served[9000.0][a]) for a in ad_ids) > 1e-3


@pytest.mark.parametrize("model", ["hit", "dcn"])
def test_served_match_counts_the_requests_history_like_training(tmp_path: Path, model: str) -> None:
    """A model with the exact history match serves it: the request's raw tags go through the
    vocabulary and the max_len cut as training's did, and the served pCTR equals the offline
    model's to 1e-6 for histories with and without the ads' categories; the term moves the pCTR
    (zeroing its weights changes the offline scores), so a dropped term would show."""
    frame = _frame(2000).assign(cat=lambda f: f["a"] % 8)  # one category per ad, one history per user
    rng = np.random.default_rng(2)
    per_user = ["|".join(map(str, rng.integers(0, 8, rng.integers(0, 7)))) for _ in range(60)]
    frame["tags"] = [per_user[u] for u in frame["u"]]
    clicked = [str(c) in t.split("|")[-3:] for c, t in zip(frame["cat"], frame["tags"], strict=True)]
    frame["y"] = (np.array(clicked) | (np.random.default_rng(1).random(len(frame)) < 0.1)).astype(int)
    ds = load_dataset(_schema(tmp_path, SHARED, frame))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, progress=False, calibration="none")
    result = train(ds, model, {"match": True}, cfg, tmp_path / "art")
    match = result.model.match
    assert result.artifact is not None and isinstance(match, IdMatch)
    assert match.weights["tags"].shape == (3,) and match.weights["tags"].min() > 0.1  # a match is a click
    histories: tuple[list[str], ...] = (["1", "2", "3", "4", "5"], ["6"], [])
    served = _serve_each(
        tmp_path, result.artifact, ds, {len(tags): {"u": "3", "tags": tags, "age": 30} for tags in histories}
    )
    ad_ids = ds.ad_ids[:20].tolist()
    spec = {f.name: f for f in ds.schema.features}
    net = result.model.eval()
    ad_feats = ds.ads.take(np.array([np.flatnonzero(ds.ad_ids == a)[0] for a in ad_ids]))
    moved = 0.0
    for tags in histories:
        feats: dict[str, torch.Tensor | Jagged] = {
            "u": torch.tensor([ds.vocabs["u"].encode_one("3")]),
            "tags": Jagged(
                torch.from_numpy(spec["tags"].truncate(ds.vocabs["category"].encode(tags))),
                torch.zeros(1, dtype=torch.int64),
            ),
            "age": torch.from_numpy(spec["age"].bucketize([30])),
        }
        with torch.inference_mode():
            offline = torch.sigmoid(net.score(net.encode_user(feats), net.encode_ad(ad_feats)).reshape(-1)).numpy()
            saved = match.weights["tags"].clone()
            match.weights["tags"].zero_()
            unmatched = torch.sigmoid(net.score(net.encode_user(feats), net.encode_ad(ad_feats)).reshape(-1)).numpy()
            match.weights["tags"].copy_(saved)
        np.testing.assert_allclose([served[len(tags)][a] for a in ad_ids], offline, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(offline - unmatched).max()))
    assert moved > 0.05


@pytest.mark.parametrize("model", ["hit", "dcn"])
def test_served_pairs_cross_the_requests_age_band_with_the_ad_like_training(tmp_path: Path, model: str) -> None:
    """A model with pair tables serves them: the request's raw age goes through the quantile
    buckets as training's did, and the served pCTR equals the offline model's to 1e-6 for a young
    and an old user; the term moves the pCTR (zeroing the tables changes the offline scores)."""
    frame = _frame(2000)
    young_likes_even = (frame["age"] < 44) == (frame["a"] % 2 == 0)  # an age band x ad cross
    frame["y"] = (young_likes_even & (np.random.default_rng(1).random(len(frame)) < 0.8)).astype(int)
    ds = load_dataset(_schema(tmp_path, SHARED, frame))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, progress=False, calibration="none")
    result = train(ds, model, {"pairs": True}, cfg, tmp_path / "art")
    pairs = result.model.pairs
    assert result.artifact is not None and isinstance(pairs, IdPairs)
    assert "age" in [f.name for f in pairs.request]
    served = _serve_each(
        tmp_path, result.artifact, ds, {age: {"u": "3", "tags": ["1"], "age": age} for age in (25, 65)}
    )
    ad_ids = ds.ad_ids[:20].tolist()
    spec = {f.name: f for f in ds.schema.features}
    net = result.model.eval()
    ad_feats = ds.ads.take(np.array([np.flatnonzero(ds.ad_ids == a)[0] for a in ad_ids]))
    tables = [table.weight for table in pairs.tables.tables.values()]
    moved = 0.0
    for age in (25, 65):
        feats: dict[str, torch.Tensor | Jagged] = {
            "u": torch.tensor([ds.vocabs["u"].encode_one("3")]),
            "tags": Jagged(
                torch.from_numpy(spec["tags"].truncate(ds.vocabs["category"].encode(["1"]))),
                torch.zeros(1, dtype=torch.int64),
            ),
            "age": torch.from_numpy(spec["age"].bucketize([age])),
        }
        with torch.inference_mode():
            offline = torch.sigmoid(net.score(net.encode_user(feats), net.encode_ad(ad_feats)).reshape(-1)).numpy()
            saved = [t.clone() for t in tables]
            for t in tables:
                t.zero_()
            unpaired = torch.sigmoid(net.score(net.encode_user(feats), net.encode_ad(ad_feats)).reshape(-1)).numpy()
            for t, s in zip(tables, saved, strict=True):
                t.copy_(s)
        np.testing.assert_allclose([served[age][a] for a in ad_ids], offline, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(offline - unpaired).max()))
    assert moved > 0.05
