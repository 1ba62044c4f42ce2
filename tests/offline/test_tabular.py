"""Schema-file datasets on the real Amazon and Taobao samples, and CSV/Parquet equivalence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from models.registry import MODELS, build_model
from offline.data import load_dataset
from offline.export import export
from offline.train import TrainConfig, rare_id_fields, resolve_model_config, train
from prerank.cli import main
from service.app import create_app
from service.config import Settings
from tests.conftest import SHARED_DATA

SCHEMAS = Path(__file__).resolve().parents[2] / "offline" / "data" / "schemas"
TAOBAO, AMAZON = SHARED_DATA / "taobao-display-ad", SHARED_DATA / "amazon-electronics"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def test_taobao_sample_time_split_and_serving(tmp_path: Path) -> None:
    ds = load_dataset(str(SCHEMAS / "taobao-display-ad.toml"), data_dir=_need(TAOBAO))
    raw = pd.read_csv(TAOBAO / "raw_sample_head10k.csv.gz")
    assert len(ds.train) + len(ds.valid) + len(ds.test) == len(raw) == 9999
    assert len(ds.test) == 2000 and ds.protocol == "time"
    # time-ordered: the test rows are exactly the 2,000 latest impressions (as (ad, click) pairs),
    # not the earliest and not a random 2,000
    by_time = raw.sort_values("time_stamp", kind="stable")
    test_rows = Counter(zip(ds.ad_ids[ds.test.ad_rows].tolist(), ds.test.labels.astype(int).tolist(), strict=True))
    latest = Counter(zip(by_time["adgroup_id"].iloc[-2000:], by_time["clk"].iloc[-2000:], strict=True))
    earliest = Counter(zip(by_time["adgroup_id"].iloc[:2000], by_time["clk"].iloc[:2000], strict=True))
    assert test_rows == latest and test_rows != earliest
    positives = float(np.concatenate([ds.train.labels, ds.valid.labels, ds.test.labels]).mean())
    assert positives == pytest.approx(raw["clk"].mean())  # 4.35 % CTR
    assert len(ds.user_keys) == raw["user"].nunique() == 8328
    assert sorted(ds.ad_ids.tolist()) == sorted(raw["adgroup_id"].unique().tolist())  # integer ids served as they are
    # vocabularies come from training rows only: an ad seen only in test rows is unknown (0)
    unseen = ds.ads.sparse["adgroup_id"] == 0
    assert unseen.any() and ds.vocabs["adgroup_id"].encode_one(str(ds.ad_ids[unseen][0])) == 0

    result = train(ds, "hit", {}, TrainConfig(epochs=1, batch_size=256, progress=False), tmp_path / "hit")
    assert result.artifact is not None
    export(result.artifact, ds, f"local:{tmp_path / 'store'}")
    with TestClient(create_app(Settings(store=f"local:{tmp_path / 'store'}", poll_seconds=60))) as client:
        body = {"user": {"id": ds.user_keys[0]}, "candidates": {"ad_ids": ds.ad_ids[:50].tolist()}}
        r = client.post("/prerank", json=body)
        assert r.status_code == 200 and r.json()["user_known"] and len(r.json()["ad_ids"]) == 50


def test_amazon_sample_threshold_label_and_string_item_ids() -> None:
    ds = load_dataset(str(SCHEMAS / "amazon-electronics.toml"), data_dir=_need(AMAZON))
    raw = pd.read_csv(AMAZON / "ratings_Electronics_head50k.csv.gz", dtype={"ItemId": str})
    labels = np.concatenate([ds.train.labels, ds.valid.labels, ds.test.labels])
    assert labels.mean() == pytest.approx((raw["rating"] >= 4).mean())
    assert ds.info["ad_ids_from"] == "row number" and ds.ad_ids.tolist() == list(range(1, raw["ItemId"].nunique() + 1))
    assert "0132793040" in ds.vocabs["item_id"].tokens  # ASINs keep their leading zeros


def test_csv_and_parquet_read_the_same_rows_with_sequences_and_dense(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "u": rng.integers(0, 40, n).astype(str),
            "a": rng.integers(0, 30, n),
            "tags": ["|".join(map(str, rng.integers(0, 9, rng.integers(0, 4)))) for _ in range(n)],
            "price": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
            "y": rng.integers(0, 2, n),
        }
    )
    schema = """
files = ["rows.FORMAT"]
user_key = "u"
ad_key = "a"
label = "y"
features = [
  { column = "u", side = "user", kind = "sparse" },
  { column = "tags", side = "user", kind = "sequence" },
  { column = "a", side = "ad", kind = "sparse" },
  { column = "price", side = "ad", kind = "dense" },
]
"""
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.astype({"a": str}).to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "csv.toml").write_text(schema.replace("FORMAT", "csv"))
    (tmp_path / "pq.toml").write_text(schema.replace("FORMAT", "parquet"))
    a, b = load_dataset(str(tmp_path / "csv.toml")), load_dataset(str(tmp_path / "pq.toml"))
    assert a.schema == b.schema
    for name in ("u", "a"):
        np.testing.assert_array_equal(
            a.train.users.sparse.get(name, a.train.ads.sparse.get(name)),
            b.train.users.sparse.get(name, b.train.ads.sparse.get(name)),
        )
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.ads.dense["price"], b.ads.dense["price"])
    assert not np.isnan(a.ads.dense["price"]).any()  # missing dense values are 0
    values, offsets = a.users.sequences["tags"]
    assert offsets[-1] == len(values) and (np.diff(offsets) <= 3).all()
    result = train(a, "fit", {}, TrainConfig(epochs=1, batch_size=64, progress=False))  # FIT's DIN reads `tags`
    assert result.metrics["epochs"] == 1 and np.isfinite(result.metrics["test_logloss"])  # it trains end to end


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('files = ["x.csv"]\nad_key = "a"\nlabel = "y"\nfeatures = []', "missing required key: user_key"),
        (
            'files=["rows.csv"]\nuser_key="u"\nad_key="a"\nlabel="y"\n'
            'features=[{column="u", side="usr", kind="sparse"}]',
            "features[0].side (column 'u'): Input should be 'user', 'ad' or 'context', got 'usr'",
        ),
        (
            'files=["rows.csv"]\nuser_key="u"\nad_key="a"\nlabel="y"\n'
            'features=[{column="u", side="user", kind="sparse"}, {column="zz", side="ad", kind="sparse"}]',
            "columns ['zz'] not in",
        ),
        ("not = [toml", "not valid TOML"),
    ],
)
def test_bad_schema_files_are_one_line_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    pd.DataFrame({"u": ["1", "2"] * 10, "a": [1, 2] * 10, "y": [0, 1] * 10}).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "s.toml").write_text(text)
    assert main(["train", "--dataset", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_rare_ids_leave_each_side_a_network_input(tmp_path: Path) -> None:
    """The sample's only ad field (adgroup_id) and, with every field counted rare, its most
    populated user-side field (pid) stay in the network; naming every ad field wide is an error."""
    ds = load_dataset(str(SCHEMAS / "taobao-display-ad.toml"), data_dir=_need(TAOBAO))
    assert rare_id_fields(ds) == ("user_id",) == rare_id_fields(ds, max_median_rows=10**6)
    assert resolve_model_config(ds, "hit", {}) == {"wide": ["user_id"], "linear": True}
    with pytest.raises(ValueError, match="wide names every ad field: the ad tower needs at least one input"):
        build_model("hit", ds.schema, {"linear": True, "wide": ["adgroup_id"]})


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_on_a_schema_file_dataset(model: str, tmp_path: Path) -> None:
    ds = load_dataset(str(SCHEMAS / "taobao-display-ad.toml"), data_dir=_need(TAOBAO))
    result = train(ds, model, {}, TrainConfig(epochs=1, batch_size=512, progress=False), tmp_path / model)
    assert np.isfinite(result.metrics["test_logloss"]) and result.metrics["dataset"] == "taobao-display-ad"
    assert (tmp_path / model / "weights.safetensors").exists()
