"""The serving fast paths compute the same function as the batched training paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.features import FeatureSchema, FeatureSpec, Jagged, Kind, Side
from models.layers import MLP, FieldEmbedding, fold_for_inference
from models.registry import build_model


@pytest.mark.parametrize("pooling", ["mean", "sum", "recency"])
@pytest.mark.parametrize("newest_first", [False, True])
def test_one_row_pooling_equals_the_batched_segment_pool(pooling: str, newest_first: bool) -> None:
    torch.manual_seed(0)
    max_len = 4 if pooling == "recency" else None
    fields = (
        # two fields on one vocabulary: an nn.Embedding pooled by segments (not an EmbeddingBag)
        FeatureSpec(
            "history", Side.USER, Kind.SEQUENCE, vocab="c", pooling=pooling, max_len=max_len, newest_first=newest_first
        ),
        FeatureSpec("category", Side.USER, Kind.SPARSE, vocab="c"),
    )
    embedding = FieldEmbedding(fields, FeatureSchema(fields, {"c": 50}), dim=8)
    for table in embedding.tables.values():
        assert isinstance(table.weight, torch.Tensor)
        nn.init.normal_(table.weight)
    if pooling == "recency":
        nn.init.normal_(embedding.recency["history"])
    rows = [[3, 7, 7, 12, 40, 2], [], [5], [9, 1, 33]]  # the longest row is longer than max_len
    values = torch.tensor([t for r in rows for t in r], dtype=torch.int64)
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(r) for r in rows]), 0)[:-1].tolist()])
    batched = embedding.embed({"history": Jagged(values, offsets), "category": torch.arange(1, 5)})[0]
    for i, r in enumerate(rows):
        one = Jagged(torch.tensor(r, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
        alone = embedding.embed({"history": one, "category": torch.tensor([i + 1])})[0]
        torch.testing.assert_close(alone, batched[i : i + 1], rtol=1e-6, atol=1e-6)
    assert batched[1].abs().sum() == 0  # an empty history pools to zeros


def test_folding_batch_norm_keeps_the_function_and_removes_the_ops(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("hit", tiny.schema, {"batch_norm": True, "dropout": 0.2}).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms
    for m in norms:  # statistics and affine terms far from the identity, as after training
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    feats = tiny.users.take(torch.arange(64).numpy())
    with torch.inference_mode():
        before = model.encode_user(feats)
    with pytest.raises(ValueError, match="eval mode"):
        fold_for_inference(build_model("hit", tiny.schema, {}).train())
    fold_for_inference(model)
    kinds = {type(layer) for mlp in model.modules() if isinstance(mlp, MLP) for layer in mlp}
    assert nn.BatchNorm1d not in kinds and nn.Dropout not in kinds and nn.Linear in kinds
    with torch.inference_mode():
        after = model.encode_user(feats)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    fold_for_inference(model)  # idempotent
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_user(feats), after)


def test_folded_mlps_run_their_plan_without_autograd_and_the_modules_with_it(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = fold_for_inference(build_model("hit", tiny.schema, {"batch_norm": True}).eval())
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    assert mlps and all(m.plan is not None and len(m.plan) == len(m) // 2 for m in mlps)
    calls = []
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            layer.register_forward_hook(lambda *_: calls.append(1))
    feats = tiny.users.take(torch.arange(8).numpy())
    with torch.enable_grad():  # training-style call: the modules, every Linear called
        modules = model.encode_user(feats).detach()
    linear_calls = len(calls)
    calls.clear()
    with torch.inference_mode():  # serving: the plan (addmm + ReLU), no Linear module of an MLP is called
        planned = model.encode_user(feats)
    assert linear_calls > len(calls)
    planned_layers = [len(m.plan or ()) for m in model.user_tower.modules() if isinstance(m, MLP)]
    assert len(calls) == linear_calls - sum(planned_layers)
    torch.testing.assert_close(planned, modules, rtol=1e-5, atol=1e-6)


def test_embedding_lookups_without_autograd_equal_the_module_lookups(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("hit", tiny.schema, {}).eval()
    for table in model.user_tower.embedding.tables.values():
        nn.init.normal_(table.weight)
    feats = tiny.users.take(torch.arange(1).numpy())  # one row: the served shape
    with torch.enable_grad():
        modules = [e.detach() for e in model.user_tower.embedding.embed(feats)]
    with torch.no_grad():
        direct = model.user_tower.embedding.embed(feats)
    assert len(direct) == len(modules) > 1
    for a, b in zip(direct, modules, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
