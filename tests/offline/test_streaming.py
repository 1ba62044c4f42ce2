"""Streaming training from Parquet / CSV shards (offline.data.stream) against the in-memory loader.

Real files (pyarrow writes them, pyarrow reads them back), a real scale world, real training, and
`torchrun` with two gloo ranks reading disjoint shards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from models.features import HashedVocabulary, Jagged
from offline.data.dataset import Batch, Split
from offline.data.stream import epoch_shards, load_streaming
from offline.data.tabular import load_tabular
from offline.metrics import auc, logloss
from offline.scale_world import ScaleWorldConfig, entity_fields, generate_scale_world, true_logits
from offline.train import TrainConfig, train
from prerank.cli import main as prerank

ROOT = Path(__file__).resolve().parents[2]
# "wide": [] states what a streamed log defaults to (its rows per id are not counted in memory), so
# the in-memory twin trains the same model.
SMALL_HIT = {"hidden": [64, 16], "dropout": 0.0, "embedding_dim": 16, "wide": []}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("scale-world")
    config = ScaleWorldConfig(ads=2_000, users=10_000, rows=150_000, rows_per_shard=40_000, seed=3)
    return out, generate_scale_world(config, out)


SCHEMA = """
name = "mixed"
user_key = "user"
ad_key = "item"
label = "click"
timestamp = "ts"
bid = "bid"

[splits]
train = ["train-*.{ext}"]
valid = "valid.{ext}"
test = ["test.{ext}"]

[[features]]
column = "user"
side = "user"
kind = "sparse"
min_count = 2

[[features]]
column = "uid"
side = "user"
kind = "sparse"
hash_buckets = 97
hash = "splitmix64"

[[features]]
column = "hist"
side = "user"
kind = "sequence"
vocab = "item"
max_len = 3

[[features]]
column = "ctx"
side = "context"
kind = "sparse"

[[features]]
column = "item"
side = "ad"
kind = "sparse"

[[features]]
column = "price"
side = "ad"
kind = "dense"
normalize = true

[[features]]
column = "price_bucket"
side = "ad"
kind = "dense"
buckets = 4
"""


def _mixed_log(folder: Path, ext: str) -> Path:
    """A log with every kind of field (a user's and an ad's fields the same on all their rows), in 4 files."""
    rng = np.random.default_rng(7)
    n, users = 2_400, 90
    user = rng.integers(0, users, n)
    hist = {u: "|".join(str(i) for i in rng.integers(0, 40, rng.integers(0, 6))) for u in range(users)}
    item = rng.integers(0, 50, n)
    price_of = rng.gamma(2.0, 3.0, 50)
    price_of[rng.random(50) < 0.15] = np.nan
    price = price_of[item]
    frame = pd.DataFrame(
        {
            "ts": np.arange(n),
            "user": [f"u{u}" for u in user],
            "uid": user * 1_000_003,
            "hist": [hist[u] for u in user],
            "ctx": rng.integers(0, 3, n),
            "item": item,
            "price": price,
            "price_bucket": price,
            "bid": np.round(rng.uniform(0.5, 2.0, n), 3),
            "click": (rng.random(n) < 0.2).astype(int),
        }
    )
    parts = {"train-0": frame[:1000], "train-1": frame[1000:1800], "valid": frame[1800:2100], "test": frame[2100:]}
    for name, part in parts.items():
        if ext == "csv":
            part.to_csv(folder / f"{name}.csv", index=False)
        else:
            part.to_parquet(folder / f"{name}.parquet", index=False, row_group_size=256)
    schema = folder / "schema.toml"
    schema.write_text(SCHEMA.replace("{ext}", ext))
    return schema


def _equal(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, Jagged):
            assert torch.equal(x.values, y.values) and torch.equal(x.offsets, y.offsets), name
        else:
            assert torch.allclose(x, y) if x.is_floating_point() else torch.equal(x, y), name


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_streamed_rows_encode_exactly_as_the_in_memory_loader(tmp_path: Path, ext: str) -> None:
    schema = _mixed_log(tmp_path, ext)
    memory, stream = load_tabular(schema), load_streaming(schema, shuffle_buffer=0)
    assert stream.schema == memory.schema  # same vocab sizes, dense moments, bucket boundaries
    assert {k: v.to_json() for k, v in stream.vocabs.items()} == {k: v.to_json() for k, v in memory.vocabs.items()}
    assert stream.vocabs["item"] is stream.vocabs["item"]  # hist and item share one vocabulary
    for name in ("train", "valid", "test"):
        mem, st = getattr(memory, name), getattr(stream, name)
        assert len(mem) == len(st) and np.array_equal(mem.labels, st.labels)
        _equal(mem.batch(np.arange(len(mem)))[0], next(st.batches(len(st))))
    sequence = next(stream.train.batches(len(stream.train)))["hist"]
    assert isinstance(sequence, Jagged)
    assert int(np.diff(np.append(sequence.offsets.numpy(), len(sequence.values))).max()) <= 3  # max_len


def test_a_streamed_epoch_reads_every_training_row_once_in_a_seeded_order(world: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    path, ref = world
    stream = load_streaming(path / "schema.toml", shuffle_buffer=8192)

    def users(seed: int) -> np.ndarray:
        batches = list(stream.train.epoch(np.random.default_rng(seed), 1000))
        assert all(b.rows is None and b.size == len(b.labels) for b in batches)
        assert [len(b.labels) for b in batches[:-1]] == [1000] * (len(batches) - 1)
        return np.concatenate([b.features["user_id"].numpy() for b in batches])

    first, again, other = users(0), users(0), users(1)
    assert len(first) == ref["rows"]["train"] == len(stream.train)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(np.sort(first), np.sort(other))  # the same rows, in another order
    in_file_order = next(stream.train.batches(len(stream.train)))["user_id"].numpy()
    assert np.array_equal(np.sort(first), np.sort(in_file_order))
    # shuffled beyond one buffer: rows from the first 10% of the log reach the second half of the epoch
    early = np.isin(first[len(first) // 2 :], in_file_order[: len(first) // 10])
    assert early.mean() > 0.02


def test_ranks_read_disjoint_shards_that_cover_the_log() -> None:
    files = tuple(Path(f"part-{i}.parquet") for i in range(7))
    for seed in range(3):
        parts = [epoch_shards(files, np.random.default_rng(seed), r, 3) for r in range(3)]
        assert sorted(f for p in parts for f in p) == sorted(files)
        assert sum(len(p) for p in parts) == len(files)
    assert epoch_shards(files, None, 1, 2) == list(files[1::2])
    with pytest.raises(ValueError, match="cannot give each of 8 ranks"):
        epoch_shards(files, None, 0, 8)


class _InOrder(Split):
    """An in-memory split trained in log order (what a streamed split with no shuffle reads)."""

    def epoch(self, rng, batch_size, rank=0, world=1, negative_rate=1.0, device="cpu") -> Iterator[Batch]:  # type: ignore[no-untyped-def,override]
        for start in range(0, len(self), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self)))
            feats, labels = self.batch(rows, device)
            yield Batch(feats, labels, rows, len(rows))


def test_streaming_training_equals_in_memory_training(world: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    path, ref = world
    cfg = TrainConfig(epochs=2, batch_size=1024, sparse_embeddings=True, progress=False, patience=5)
    memory = load_tabular(path / "schema.toml")
    t = memory.train
    memory.train = _InOrder(t.user_rows, t.ad_rows, t.labels, t.users, t.ads)
    # the same batches in the same order: the same model, to float rounding
    one = TrainConfig(epochs=1, batch_size=1024, sparse_embeddings=True, progress=False)
    exact_mem = train(memory, "hit", SMALL_HIT, one)
    exact_stream = train(load_streaming(path / "schema.toml", shuffle_buffer=0), "hit", SMALL_HIT, one)
    for a, b in zip(exact_mem.model.state_dict().values(), exact_stream.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert exact_stream.metrics["test_auc"] == pytest.approx(exact_mem.metrics["test_auc"], abs=1e-6)
    # shuffled: the streamed order is a block shuffle, the in-memory one a permutation; same quality
    shuffled_mem = train(load_tabular(path / "schema.toml"), "hit", SMALL_HIT, cfg)
    shuffled_stream = train(load_streaming(path / "schema.toml", shuffle_buffer=16_384), "hit", SMALL_HIT, cfg)
    assert shuffled_stream.metrics["streamed"] is True and shuffled_stream.metrics["epochs"] == 2
    bayes = ref["bayes"]["auc"]
    for run in (shuffled_mem, shuffled_stream):
        assert 0.58 < run.metrics["test_auc"] < bayes
    assert abs(shuffled_stream.metrics["test_auc"] - shuffled_mem.metrics["test_auc"]) < 0.03
    assert shuffled_stream.history[0]["train_rows"] == ref["rows"]["train"]


def test_the_scale_world_is_seeded_time_ordered_and_its_bayes_auc_is_recomputable(
    tmp_path: Path,
    world: tuple[Path, dict],  # type: ignore[type-arg]
) -> None:
    path, ref = world
    config = ScaleWorldConfig(**ref["config"])
    again = generate_scale_world(config, tmp_path / "again")
    assert again["data_sha256"] == ref["data_sha256"]  # the same config writes the same rows
    assert ref["shards"] == {"train": 4, "valid": 1, "test": 1} and ref["rows"]["test"] == 15_000
    test = pq.read_table(path / "test" / "part-00000.parquet").to_pandas()
    train_last = pq.read_table(sorted((path / "train").glob("*.parquet"))[-1]).to_pandas()
    assert train_last.ts.max() <= test.ts.min() and test.ts.is_monotonic_increasing
    fields = entity_fields(test.user_id.to_numpy(), test.ad_id.to_numpy(), config.seed)
    assert np.array_equal(fields["category"], test.category.to_numpy())
    users, ads, slots = test.user_id.to_numpy(), test.ad_id.to_numpy(), test.slot.to_numpy()
    p = 1 / (1 + np.exp(-true_logits(users, ads, slots, config.seed)))
    assert ref["bayes"]["auc"] == pytest.approx(auc(test.click.to_numpy(), p), abs=1e-6)
    assert ref["bayes"]["logloss"] == pytest.approx(logloss(test.click.to_numpy(), p), abs=1e-5)
    assert 0.74 < ref["bayes"]["auc"] < 0.82 and 0.03 < ref["positive_rate"]["train"] < 0.12
    # long tail: a few users hold many rows, most hold few
    counts = test.user_id.value_counts()
    assert counts.iloc[0] >= 10 and counts.median() <= 2


def test_splitmix64_hashing_is_vectorised_and_agrees_one_by_one() -> None:
    vocab = HashedVocabulary(1000, "splitmix64")
    values = np.array([0, 1, 2, 49_999_999, -5, 2**62], np.int64)
    ids = vocab.encode(values)
    assert ids.dtype == np.int64 and ((ids >= 1) & (ids <= 1000)).all()
    assert list(ids) == [vocab.encode_one(v) for v in values] == [vocab.encode_one(str(v)) for v in values]
    assert vocab.encode_one("not a number") == 0
    assert HashedVocabulary.from_json(vocab.to_json()).encode(values).tolist() == ids.tolist()
    older = HashedVocabulary.from_json({"hash_buckets": 1000})  # artifacts from before the hash key
    assert isinstance(older, HashedVocabulary) and older.hash == "blake2b"
    big = np.arange(1, 2_000_001, dtype=np.int64)
    spread = np.bincount(HashedVocabulary(1024, "splitmix64").encode(big), minlength=1025)[1:]
    assert spread.min() > 0.9 * spread.mean() and spread.max() < 1.1 * spread.mean()


def test_stream_cli_trains_and_bad_input_is_a_one_line_error(
    world: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    path, _ = world
    schema = str(path / "schema.toml")
    common = ["--model", "hit", "--model-config", json.dumps(SMALL_HIT), "--no-progress", "--threads", "1"]
    flags = ["--epochs", "1", "--max-steps-per-epoch", "20", "--sparse-embeddings", "--calibration", "platt"]
    code = prerank(["train", "--dataset", schema, "--stream", *flags, "--out", str(tmp_path / "art"), *common])
    assert code == 0
    metrics = json.loads((tmp_path / "art" / "metrics.json").read_text())
    assert metrics["history"][0]["train_rows"] == 20 * 2048 and metrics["streamed"] is True
    assert metrics["rows"]["train"] == 127_500 and metrics["calibration"] == "platt"
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text((path / "schema.toml").read_text().replace('hash = "splitmix64"\n', 'hash = "md5"\n', 1))
    for argv, message in [
        (["--dataset", "synthetic", "--stream"], "--stream reads a schema file with [splits]"),
        (["--dataset", schema, "--stream", "--data-dir", str(tmp_path)], "matches no file"),
        (["--dataset", str(bad), "--stream"], "hash"),
        (["--dataset", schema, "--stream", "--shuffle-buffer", "-1"], "--shuffle-buffer"),
    ]:
        assert prerank(["train", *argv, "--out", str(tmp_path / "x"), *common]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert prerank(["generate-scale", "--out", str(tmp_path / "w"), "--rows", "1.5x"]) == 2
    assert "not a count" in capsys.readouterr().err


@pytest.mark.integration
def test_two_ddp_ranks_stream_disjoint_shards_and_stop_together(world: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    path, ref = world
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed")
    # 4 training shards of 40k, 40k, 40k and 7.5k rows, two per rank: one rank holds 80k rows, the
    # other 47.5k, and both stop when the second runs out
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "prerank.train", "--dataset",
           str(path / "schema.toml"), "--stream", "--model", "hit", "--model-config", json.dumps(SMALL_HIT),
           "--epochs", "1", "--batch-size", "1024", "--lr", "0.005", "--sparse-embeddings", "--calibration", "none",
           "--no-progress", "--threads", "1", "--out", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 512 rows per rank per step, as many steps as the smaller rank fills
    assert metrics["history"][0]["train_rows"] == 2 * 512 * (47_500 // 512)
    assert 0.55 < metrics["test_auc"] < ref["bayes"]["auc"]


def test_stream_bench_measures_each_run_in_a_fresh_process(world: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    path, ref = world
    out = tmp_path / "bench"
    argv = ["stream-bench", str(path / "schema.toml"), "--steps", "3", "--threads", "1", "--out", str(out)]
    assert prerank([*argv, "--work", str(tmp_path / "work"), "--in-memory-up-to", "1000000"]) == 0
    report = json.loads((out / "report.json").read_text())
    stream, memory = report["runs"]
    assert (stream["mode"], memory["mode"]) == ("stream", "in-memory")
    for run in (stream, memory):
        assert run["rows_trained"] == 3 * 2048 and not run["full_epoch"]
        assert 200 * 2**20 < run["peak_rss_bytes"] < 8 * 2**30  # the child's own VmHWM, not this process's
        assert run["world_rows"] == sum(ref["rows"].values()) and run["bayes_auc"] == ref["bayes"]["auc"]
    assert (out / "memory.png").stat().st_size > 5_000 and "in-memory" in (out / "report.md").read_text()
    assert "machine" in report and report["code_version"]


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_a_streamed_export_publishes_the_in_memory_snapshot(tmp_path: Path, ext: str) -> None:
    from models.artifact import load_index
    from offline.export import export

    schema = _mixed_log(tmp_path, ext)
    memory = load_tabular(schema)
    cfg = TrainConfig(epochs=1, batch_size=256, progress=False)
    train(memory, "hit", SMALL_HIT, cfg, tmp_path / "art")
    export(tmp_path / "art", memory, f"local:{tmp_path / 'a'}")
    argv = ["export", str(tmp_path / "art"), "--dataset", str(schema), "--stream", "--threads", "1"]
    assert prerank([*argv, "--store", f"local:{tmp_path / 'b'}"]) == 0
    a = load_index(tmp_path / "a" / "versions" / "v000001")
    b = load_index(tmp_path / "b" / "versions" / "v000001")
    assert sorted(a.ad_ids) == sorted(b.ad_ids) and b.manifest["n_users"] == a.manifest["n_users"] == 90
    order_a, order_b = np.argsort(a.ad_ids), np.argsort(b.ad_ids)
    assert torch.allclose(a.rows.vectors[order_a], b.rows.vectors[order_b], atol=1e-6)
    assert np.allclose(a.bids[order_a], b.bids[order_b])  # each ad's mean bid
    assert a.ad_hashes is not None and b.ad_hashes is not None
    assert np.array_equal(a.ad_hashes[order_a], b.ad_hashes[order_b])  # the same encoded ad fields
    rows_a = {k: i for i, k in enumerate(a.user_ids)}
    take = np.array([rows_a[k] for k in b.user_ids])
    _equal(a.users.take(take), b.users.take(np.arange(len(b.user_ids))))  # each user's latest fields
