from __future__ import annotations

import itertools
from typing import cast

import numpy as np
import pytest
import torch

from models.features import FeatureSchema, FeatureSpec, Jagged, Kind, Side, Vocabulary
from models.hit import HIT, HITConfig
from models.layers import PAIR_WIDTH, FieldLinear, IdDrift, IdMatch, IdPairs
from models.losses import auxiliary_loss, hit_generation_loss
from models.registry import MODELS, build_model, config_from_dict
from models.scoring import maxsim
from models.tables import FeatureTable


@pytest.fixture
def batch(tiny):  # type: ignore[no-untyped-def]
    return tiny.train.batch(np.arange(64))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_equals_composition(tiny, batch, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, tiny.schema, {}).eval()
    feats, _ = batch
    with torch.no_grad():
        direct = model(feats)
        composed = model.score(model.encode_user(feats), model.encode_ad(feats))
        # one user against many ads (the serving shape) equals the paired rows for that user
        user_only = tiny.users.take(tiny.train.user_rows[:1])
        broadcast = model.score(model.encode_user(user_only), model.encode_ad(feats))
        one = model.encode_user(user_only)
        paired = model.score(one.expand(64, *one.shape[1:]), model.encode_ad(feats))
    assert direct.shape == (64,)
    torch.testing.assert_close(direct, composed, rtol=0, atol=1e-6)
    torch.testing.assert_close(broadcast, paired, rtol=0, atol=1e-6)


def test_maxsim_hand_computed() -> None:
    user = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2 heads, p=2)
    ads = torch.tensor([[[3.0, 1.0], [0.0, -1.0]], [[-1.0, 0.0], [0.5, 0.5]]])  # (2, 2, 2)
    # ad 0: head0 max(3, 0) = 3; head1 max(2, -2) = 2 -> 5.  ad 1: max(-1, .5) + max(0, 1) = 1.5
    torch.testing.assert_close(maxsim(user, ads), torch.tensor([5.0, 1.5]))


def test_hit_shapes_and_dims(tiny) -> None:  # type: ignore[no-untyped-def]
    model = HIT(tiny.schema, HITConfig(heads=3, head_dim=8)).eval()
    feats, _ = tiny.train.batch(np.arange(5))
    assert model.encode_user(feats).shape == (5, 3, 8)
    assert model.encode_ad(feats).shape == (5, 3, 8)
    # user statics: segment, age_bucket; ad statics: category, advertiser -> both sides have generators
    assert len(model.user_tower.generators) == 2 and len(model.ad_tower.generators) == 2


def test_generation_loss_routes_gradients_only_to_generators(tiny) -> None:  # type: ignore[no-untyped-def]
    model = HIT(tiny.schema, HITConfig()).train()
    feats, labels = tiny.train.batch(np.arange(128))
    logits, aux = model.forward_train(feats)
    gen = hit_generation_loss(aux, labels, "mimic")
    gen.backward(retain_graph=True)
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == (".generators." in name), name
    model.zero_grad(set_to_none=True)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    for name, p in model.named_parameters():
        if ".generators." in name:
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name


def test_generation_loss_values() -> None:
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mimic = torch.stack([torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])], 1)
    aux = {"user_mimic": mimic, "ad_repr": target}
    labels = torch.tensor([1.0, 0.0])
    # row 0 positive: cos(gen1, t0) = 1 -> 0 loss; row 1 negative: cos(gen2, t1) = 1 -> 0
    assert float(hit_generation_loss(aux, labels, "mimic")) == pytest.approx(0.0)
    # repo_head: mean(y * cos1) + mean((1 - y) * cos2) = (1 + 0)/2 + (0 + 1)/2
    assert float(hit_generation_loss(aux, labels, "repo_head")) == pytest.approx(1.0)
    # repo_jul2024: (1 - mean cos1) + (1 + mean cos2) = (1 - .5) + (1 + .5)
    assert float(hit_generation_loss(aux, labels, "repo_jul2024")) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown generation-loss mode"):
        hit_generation_loss(aux, labels, "nope")


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown hit config keys"):
        config_from_dict("hit", {"headz": 2})
    with pytest.raises(ValueError, match="gen_loss must be one of"):
        config_from_dict("hit", {"gen_loss": "bogus"})
    with pytest.raises(ValueError, match="unknown model"):
        config_from_dict("nope", {})


def test_schema_roundtrip_and_vocabulary() -> None:
    schema = FeatureSchema(
        (FeatureSpec("u", Side.USER, Kind.SPARSE, "u", static=True), FeatureSpec("d", Side.AD, Kind.DENSE)),
        {"u": 3},
    )
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    vocab = Vocabulary.fit(["b", "a", "b", 7])
    assert vocab.tokens == ["7", "a", "b"]
    assert list(vocab.encode(["a", "zzz", 7])) == [2, 0, 1]
    with pytest.raises(ValueError, match="need a vocab"):
        FeatureSpec("x", Side.USER, Kind.SPARSE)


def test_feature_table_take_gathers_jagged_rows() -> None:
    table = FeatureTable(
        3, sparse={"a": np.array([5, 6, 7])}, sequences={"s": (np.array([1, 2, 3, 4, 5, 6]), np.array([0, 2, 2, 6]))}
    )
    out = table.take(np.array([2, 0, 1]))
    assert out["a"].tolist() == [7, 5, 6]
    seq = out["s"]
    assert isinstance(seq, Jagged)
    assert seq.values.tolist() == [3, 4, 5, 6, 1, 2] and seq.offsets.tolist() == [0, 4, 6]
    back = FeatureTable.from_tensors(table.to_tensors("x"), "x", 3)
    assert back.take(np.array([0]))["s"].values.tolist() == [1, 2]
    with pytest.raises(ValueError, match="expected 3"):
        FeatureTable(3, sparse={"a": np.array([1])})


def test_dat_mimic_loss_trains_only_the_augmented_vectors(tiny) -> None:  # type: ignore[no-untyped-def]
    model = build_model("dat", tiny.schema, {}).train()
    feats, labels = tiny.train.batch(np.arange(256))
    labels = torch.ones_like(labels)  # every row positive: the loss is non-zero
    _, aux = model.forward_train(feats)
    loss = auxiliary_loss(model, aux, labels)
    assert float(loss.detach()) > 0
    loss.backward()
    learned = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert learned == {"user_aug.weight", "ad_aug.weight"}
    # negatives contribute nothing
    assert float(auxiliary_loss(model, aux, torch.zeros_like(labels))) == 0.0


def test_inttower_cir_is_infonce_over_positive_rows() -> None:
    schema = FeatureSchema(
        (FeatureSpec("u", Side.USER, Kind.SPARSE, "u"), FeatureSpec("a", Side.AD, Kind.SPARSE, "a")), {"u": 3, "a": 3}
    )
    model = build_model("inttower", schema, {"cir_weight": 1.0, "cir_temperature": 1.0, "user_heads": 1, "ad_heads": 1})
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    ad = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, -1.0]])
    labels = torch.tensor([1.0, 1.0, 0.0])  # the third row is negative and drops out
    loss = auxiliary_loss(model, {"user_repr": user, "ad_repr": ad}, labels)
    # cosines: diagonal 1, off-diagonal 0 -> each positive row: -log(e / (e + 1))
    assert float(loss) == pytest.approx(2 * -np.log(np.e / (np.e + 1)), rel=1e-6)


def test_fit_routes_each_ad_to_its_meta_row_and_scores_with_that_user_row(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("fit", tiny.schema, {"meta_rows": 4}).eval()
    feats, _ = tiny.train.batch(np.arange(32))
    with torch.no_grad():
        for p in model.parameters():  # away from the near-zero init, so every part moves the score
            p.normal_(std=0.3)
        ads = model.encode_ad(feats)
        user = model.encode_user(feats)  # (32, K, H_u, p)
        routes = (model.ad_embedding(feats) @ model.meta.T).argmax(-1)
        assert torch.equal(ads.routes, routes)
        assert user.shape == (32, 4, 4, 16)
        # re-routing every ad to another meta row changes the score: the route is used
        other = model.score(user, type(ads)(ads.vectors, (ads.routes + 1) % 4))
        assert not torch.allclose(other, model.score(user, ads))


def test_fit_annealed_assignment_is_soft_in_training_then_hard(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("fit", tiny.schema, {"meta_rows": 4, "anneal_steps": 10, "anneal_to": 1e-3})
    feats, labels = tiny.train.batch(np.arange(32))
    with torch.no_grad():
        model.meta.normal_(std=1.0)
    ad_input = model.ad_embedding(feats)
    assert model.temperature() == pytest.approx(1.0)
    _, soft = model.assign(ad_input)
    assert torch.allclose(soft.sum(-1), torch.ones(32))
    assert float(soft.detach().max(-1).values.min()) < 0.99  # a real mixture at temperature 1
    # the gradient of the score reaches every meta row through the mixture
    logits, _ = model.forward_train(feats)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    assert model.meta.grad is not None and bool((model.meta.grad.abs().sum(-1) > 0).all())
    assert int(model.anneal_step) == 1  # type: ignore[arg-type]
    model.anneal_step.fill_(5)
    assert model.temperature() == pytest.approx(1e-3**0.5)
    model.anneal_step.fill_(25)  # past the schedule: the final temperature, a near-hard choice
    assert model.temperature() == pytest.approx(1e-3)
    routes, late = model.assign(ad_input)
    agree = late.argmax(-1) == routes
    assert bool(agree.all())
    model.eval()  # evaluation is exactly hard, whatever the schedule
    routes, hard = model.assign(ad_input)
    torch.testing.assert_close(hard.detach(), torch.nn.functional.one_hot(routes, 4).float(), rtol=0, atol=1e-6)
    assert "anneal_step" not in model.state_dict()


def test_fit_behaviour_pooling_sum_is_mean_times_history_length(tiny) -> None:  # type: ignore[no-untyped-def]
    feats, _ = tiny.train.batch(np.arange(16))
    pooled = {}
    for pooling in ("mean", "sum"):
        torch.manual_seed(0)
        model = build_model("fit", tiny.schema, {"meta_rows": 4, "behaviour_pooling": pooling}).eval()
        captured: list[torch.Tensor] = []
        hook = model.user_tower.register_forward_pre_hook(lambda _m, args, out=captured: out.append(args[0]))
        with torch.no_grad():
            model(feats)
        hook.remove()
        pooled[pooling] = captured[0][:, -model.config.embedding_dim :]  # DIN's output is the last block
    seq = feats[model.behaviour.name]
    assert isinstance(seq, Jagged)
    ends = torch.cat([seq.offsets[1:], torch.tensor([len(seq.values)])])
    lengths = (ends - seq.offsets).clamp(max=model.config.max_behaviour).clamp_min(1)  # type: ignore[attr-defined]
    torch.testing.assert_close(pooled["sum"], pooled["mean"] * lengths.unsqueeze(-1).float())
    assert bool((lengths > 1).any())
    with pytest.raises(ValueError, match="behaviour_pooling"):
        build_model("fit", tiny.schema, {"behaviour_pooling": "max"})


def test_single_towers_store_embedded_features(tiny) -> None:  # type: ignore[no-untyped-def]
    feats, _ = tiny.train.batch(np.arange(8))
    n_ad_fields = len([f for f in tiny.schema.ad_fields if f.kind is not Kind.DENSE])
    lr = build_model("lr", tiny.schema, {})
    assert lr.encode_ad(feats).shape == (8, 1, 1)  # LR: the ad's partial linear logit, one number
    cold = build_model("cold", tiny.schema, {"embedding_dim": 8})
    assert cold.encode_ad(feats).shape == (8, 1, n_ad_fields * 8 + 1)
    assert not cold.precomputes_ads and not cold.ann_searchable
    fields = torch.randn(8, cold.n_fields, 8)
    assert cold.gates(fields).shape == (8, cold.n_fields)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_composition_and_broadcast_with_large_weights(tiny, batch, name: str) -> None:  # type: ignore[no-untyped-def]
    """The near-zero initialisation hides mistakes; with O(1) weights every term moves the logit."""
    torch.manual_seed(1)
    model = build_model(name, tiny.schema, {}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
        feats, _ = batch
        direct = model(feats)
        torch.testing.assert_close(direct, model.score(model.encode_user(feats), model.encode_ad(feats)))
        user_only = tiny.users.take(tiny.train.user_rows[:1])
        one = model.encode_user(user_only)
        ads = model.encode_ad(feats)
        broadcast = model.score(one, ads)
        paired = model.score(one.expand(64, *one.shape[1:]), ads)
    assert direct.std() > 1e-3, "the logit does not depend on the input"
    torch.testing.assert_close(broadcast, paired, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_what_training_runs_equals_what_serving_composes(tiny, batch, name: str) -> None:  # type: ignore[no-untyped-def]
    """`forward_train`'s logits (the ones the loss sees; DAT computes them with its own formula)
    equal `score(encode_user, encode_ad)` in eval mode, with O(1) weights so every term counts."""
    torch.manual_seed(2)
    model = build_model(name, tiny.schema, {}).eval()
    feats, _ = batch
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
        trained, _ = model.forward_train(feats)
        served = model.score(model.encode_user(feats), model.encode_ad(feats))
    assert trained.shape == (64,) and trained.std() > 1e-3
    torch.testing.assert_close(trained, served, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hit", "dcn", "cold"])
def test_wide_fields_feed_only_the_linear_part(tiny, batch, name: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(name, tiny.schema, {"linear": True, "wide": ["user_id", "ad_id"]}).eval()
    towers = (
        (model.user_tower.embedding, model.ad_tower.embedding)
        if name == "hit"
        else (
            model.user_embedding,
            model.ad_embedding,
        )
    )
    embedded = {f.name for tower in towers for f in tower.embedded}  # type: ignore[attr-defined]
    assert "user_id" not in embedded and "ad_id" not in embedded and {"segment", "category"} <= embedded
    feats, _ = batch
    other = dict(feats)
    other["ad_id"] = torch.roll(feats["ad_id"], 1)  # type: ignore[arg-type]
    with torch.no_grad():
        assert isinstance(model.ad_linear, FieldLinear)
        linear = model.ad_linear.weights.tables["ad_id"]
        linear.weight.zero_()  # a wide field's only path is its linear weight
        torch.testing.assert_close(model(feats), model(other), rtol=0, atol=1e-6)
        linear.weight.normal_()
        assert (model(feats) - model(other)).abs().max() > 0.1


def test_hit_folds_its_vocabulary_match_term_into_the_heads(tiny, batch) -> None:  # type: ignore[no-untyped-def]
    """vocab_dot adds <pooled history, ad category> from the one shared table, exactly, through MaxSim."""
    torch.manual_seed(0)
    config = HITConfig(heads=3, head_dim=8, embedding_dim=6, linear=True, wide=("user_id",), vocab_dot=True)
    model = HIT(tiny.schema, config).eval()
    assert model.dot_vocabs == ("category",)
    table = model.user_tower.embedding.tables["preferred_categories"]
    assert table is model.ad_tower.embedding.tables["category"]  # one table: an id matches itself
    feats, _ = batch
    with torch.no_grad():
        for p in model.parameters():  # large weights: the fold must be exact, not merely small
            p.normal_()
        user, ads = model.encode_user(feats), model.encode_ad(feats)
        assert user.shape == (64, 3, 8 + 6 + 2) and ads.shape == (64, 3, 8 + 6 + 2)
        heads_u, _, u = model.user_tower(feats)
        heads_a, _, a = model.ad_tower(feats)
        assert u is not None and a is not None and u.shape == a.shape == (64, 6)
        torch.testing.assert_close(a, table(feats["category"]))
        b_u = model.user_linear(feats).squeeze(-1)  # type: ignore[misc]
        b_a = model.ad_linear(feats).squeeze(-1)  # type: ignore[misc]
        expected = maxsim(heads_u, heads_a) + (u * a).sum(-1) + b_u + b_a + model.bias
        torch.testing.assert_close(model.score(user, ads), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model(feats), expected, rtol=1e-5, atol=1e-4)
        off = HIT(tiny.schema, HITConfig(heads=3, head_dim=8, embedding_dim=6)).encode_user(feats)
        assert off.shape == (64, 3, 8)  # off by default: the heads are as before
    alone = FeatureSchema(
        tuple(f for f in tiny.schema.features if f.name != "preferred_categories"), tiny.schema.vocab_sizes
    )
    with pytest.raises(ValueError, match="no vocabulary is embedded by both towers"):
        HIT(alone, HITConfig(vocab_dot=True))


def test_hit_folds_its_field_dot_term_into_the_heads(tiny, batch) -> None:  # type: ignore[no-untyped-def]
    """field_dot adds, for every user field u and ad field a, <e_u, e_a> (an FM's cross-tower pairs;
    a dense field as value x its vector), exactly, through MaxSim and beside vocab_dot."""
    torch.manual_seed(0)
    price = FeatureSpec(name="price", side=Side.AD, kind=Kind.DENSE)
    schema = FeatureSchema((*tiny.schema.features, price), tiny.schema.vocab_sizes)
    model = HIT(schema, HITConfig(heads=2, head_dim=4, embedding_dim=5, vocab_dot=True, field_dot=True)).eval()
    feats, _ = batch
    feats = {**feats, "price": torch.randn(64)}
    with torch.no_grad():
        for p in model.parameters():  # large weights: the fold must be exact, not merely small
            p.normal_()
        user, ads = model.encode_user(feats), model.encode_ad(feats)
        assert user.shape == ads.shape == (64, 2, 4 + 5 + 5)  # heads, vocab_dot's D, field_dot's D
        vec_u = model.user_tower.embedding.embed(feats)
        vec_a = model.ad_tower.embedding.embed(feats)
        assert model.ad_tower.dense_vectors is not None and model.user_tower.dense_vectors is None
        vec_a.append(feats["price"].unsqueeze(-1) * model.ad_tower.dense_vectors[0])
        assert len(vec_u) == 4 and len(vec_a) == 4
        pairs = sum((u * a).sum(-1) for u in vec_u for a in vec_a)  # pair by pair, as an FM writes it
        history = model.user_tower.embedding.embed(feats, ["preferred_categories"])[0]
        category = model.ad_tower.embedding.embed(feats, ["category"])[0]
        heads_u, _, _ = model.user_tower(feats)
        heads_a, _, _ = model.ad_tower(feats)
        expected = maxsim(heads_u, heads_a) + (history * category).sum(-1) + pairs + model.bias
        torch.testing.assert_close(model.score(user, ads), expected, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(model(feats), expected, rtol=1e-4, atol=1e-3)
        plain = HIT(schema, HITConfig(heads=2, head_dim=4, embedding_dim=5)).encode_user(feats)
        assert plain.shape == (64, 2, 4)  # off by default: the heads are as before


def test_hit_folds_its_linear_part_into_two_extra_head_columns(tiny, batch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = HIT(tiny.schema, HITConfig(heads=3, head_dim=8, linear=True, wide=("user_id",))).eval()
    feats, _ = batch
    with torch.no_grad():
        for p in model.parameters():  # large weights: the fold must be exact, not merely small
            p.normal_()
        user, ads = model.encode_user(feats), model.encode_ad(feats)
        assert user.shape == (64, 3, 10) and ads.shape == (64, 3, 10)
        heads_u, _, _ = model.user_tower(feats)
        heads_a, _, _ = model.ad_tower(feats)
        b_u = model.user_linear(feats).squeeze(-1)  # type: ignore[misc]
        b_a = model.ad_linear(feats).squeeze(-1)  # type: ignore[misc]
        expected = maxsim(heads_u, heads_a) + b_u + b_a + model.bias
        torch.testing.assert_close(model.score(user, ads), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model(feats), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="set linear true"):
        HITConfig(wide=("user_id",))
    with pytest.raises(ValueError, match=r"wide names fields the schema lacks: \['nope'\]"):
        HIT(tiny.schema, HITConfig(linear=True, wide=("nope",)))


def test_dcn_matrix_cross_is_dcn_v2s_layer_and_serves_like_training(tiny, batch) -> None:  # type: ignore[no-untyped-def]
    """cross="matrix": x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (DCN-V2), checked against a hand loop;
    the vector cross keeps its rank-1 form; a bad value is a one-line config error."""
    from models.single import DCN, DCNConfig

    torch.manual_seed(0)
    model = build_model("dcn", tiny.schema, {"cross": "matrix", "cross_layers": 2}).eval()
    assert isinstance(model, DCN) and model.cross_w.shape == (2, model.deep_width, model.deep_width)
    fields, dense = torch.randn(4, model.n_fields, model.config.embedding_dim), torch.randn(4, model.n_dense)
    with torch.no_grad():
        model.cross_b.normal_()
        x0 = x = torch.cat([fields.flatten(1), dense], 1)
        for w, b in zip(model.cross_w, model.cross_b, strict=True):
            x = x0 * (x @ w.T + b) + x
        expected = model.out(torch.cat([x, model.dnn(x0)], 1)).squeeze(-1)
        torch.testing.assert_close(model.head(fields, dense), expected, rtol=1e-5, atol=1e-5)
        feats, _ = batch
        served = model.score(model.encode_user(feats), model.encode_ad(feats))
        torch.testing.assert_close(model(feats), served, rtol=1e-5, atol=1e-5)
    vector = build_model("dcn", tiny.schema, {})
    assert isinstance(vector, DCN) and vector.cross_w.shape == (3, vector.deep_width)
    with pytest.raises(ValueError, match="cross must be"):
        DCNConfig(cross="full")


@pytest.mark.parametrize("name", ["hit", "dcn", "cold", "deepfm", "lr"])
def test_drift_gives_every_ad_id_a_slope_on_a_request_value(tiny, batch, name: str) -> None:  # type: ignore[no-untyped-def]
    """drift=("ts",) adds ts * (s_ad_id[ad] + s_category[category]) to the logit and nothing else:
    the same weights without drift score exactly that much less, in training and through the
    served path (encoded user against encoded ads)."""
    torch.manual_seed(0)
    ts = FeatureSpec(name="ts", side=Side.CONTEXT, kind=Kind.DENSE)
    schema = FeatureSchema((*tiny.schema.features, ts), tiny.schema.vocab_sizes)
    base = {"linear": True} if name == "hit" else {}
    model = build_model(name, schema, base | {"drift": ["ts"]}).eval()
    plain = build_model(name, schema, base).eval()
    feats, _ = batch
    feats = {**feats, "ts": torch.randn(64)}
    drift = model.drift
    assert isinstance(drift, IdDrift)
    with torch.no_grad():
        for p in drift.parameters():  # slopes of order 1: the term must be exact, not merely small
            p.normal_()
        missing = plain.load_state_dict(model.state_dict(), strict=False)
        assert not missing.missing_keys and all(k.startswith("drift.") for k in missing.unexpected_keys)
        tables = drift.slopes.tables
        assert set(tables) == {"ad_id", "category", "advertiser"}
        slopes = torch.stack([tables[k](feats[k]) for k in ("ad_id", "category", "advertiser")]).sum(0).squeeze(-1)
        torch.testing.assert_close(model(feats) - plain(feats), feats["ts"] * slopes, rtol=1e-4, atol=1e-3)
        served = model.score(model.encode_user(feats)[:1], model.encode_ad(feats))  # one user, 64 ads
        before = plain.score(plain.encode_user(feats)[:1], plain.encode_ad(feats))
        torch.testing.assert_close(served - before, feats["ts"][0] * slopes, rtol=1e-4, atol=1e-3)
        assert model.regularizer() > plain.regularizer()  # the slopes are under the embedding prior


def _hand_match(history: Jagged, category: torch.Tensor, weights: torch.Tensor, newest_first: bool) -> torch.Tensor:
    """sum_p w_p [h_p == c] per row, by a plain loop (position p counted back from the newest id)."""
    out = []
    ends = [*history.offsets.tolist()[1:], history.values.shape[0]]
    for row, (start, end) in enumerate(zip(history.offsets.tolist(), ends, strict=True)):
        ids = history.values[start:end].tolist()
        newest = ids if newest_first else ids[::-1]
        c = int(category[row])
        hits = [float(weights[min(p, len(weights) - 1)]) for p, h in enumerate(newest) if h == c and c > 0]
        out.append(sum(hits, 0.0))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("name", ["hit", "dcn", "cold", "deepfm", "lr"])
@pytest.mark.parametrize("max_len", [None, 4])
def test_match_adds_the_position_weighted_exact_matches_of_the_ads_category(  # type: ignore[no-untyped-def]
    tiny, batch, name: str, max_len: int | None
) -> None:
    """match=True adds sum_p w_p [history_p == category] (one weight per position back from the
    newest up to max_len, one in all without it) to the logit and nothing else, in training and
    through the served path; id 0 never matches; the term sits beside drift."""
    torch.manual_seed(0)
    features = tuple(
        FeatureSpec(f.name, f.side, f.kind, f.vocab, static=f.static, max_len=max_len) if f.kind is Kind.SEQUENCE else f
        for f in tiny.schema.features
    )
    ts = FeatureSpec(name="ts", side=Side.CONTEXT, kind=Kind.DENSE)
    schema = FeatureSchema((*features, ts), tiny.schema.vocab_sizes)
    base = ({"linear": True} if name == "hit" else {}) | {"drift": ["ts"]}
    model = build_model(name, schema, base | {"match": True}).eval()
    plain = build_model(name, schema, base).eval()
    feats, _ = batch
    history = feats["preferred_categories"]
    assert isinstance(history, Jagged)
    if max_len is not None:  # the schema's cut: the newest max_len ids
        bounds = [*history.offsets.tolist(), len(history.values)]
        rows = [history.values[a:b][-max_len:] for a, b in itertools.pairwise(bounds)]
        history = Jagged(torch.cat(rows), torch.tensor([0, *np.cumsum([len(r) for r in rows])[:-1]]))
    category = feats["category"].clone()
    starts, lengths = history.offsets, torch.diff(history.offsets, append=torch.tensor([len(history.values)]))
    for i in range(4, 48):  # plant matches: the row's oldest id, or its newest
        if lengths[i]:
            category[i] = history.values[starts[i] if i < 26 else starts[i] + lengths[i] - 1]
    category[:4] = 0  # OOV: never a match, even against an OOV id in the history
    history.values[:3] = 0
    feats = {**feats, "ts": torch.randn(64), "category": category, "preferred_categories": history}
    match = model.match
    assert isinstance(match, IdMatch) and match.width == tiny.schema.vocab_sizes["category"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        match.weights["preferred_categories"].normal_()
        missing = plain.load_state_dict(model.state_dict(), strict=False)
        assert not missing.missing_keys and all(k.startswith("match.") for k in missing.unexpected_keys)
        expected = _hand_match(history, category, match.weights["preferred_categories"], newest_first=False)
        assert (expected != 0).sum() > 10  # the batch has matches, or the check proves nothing
        torch.testing.assert_close(model(feats) - plain(feats), expected, rtol=1e-4, atol=1e-4)
        user = {k: v for k, v in feats.items()}
        one = {
            k: (Jagged(v.values[: int(v.offsets[1])], v.offsets[:1]) if isinstance(v, Jagged) else v[:1])
            for k, v in user.items()
        }
        served = model.score(model.encode_user(one), model.encode_ad(feats))  # one user, 64 ads
        before = plain.score(plain.encode_user(one), plain.encode_ad(feats))
        one_history = one["preferred_categories"]
        assert isinstance(one_history, Jagged)
        hist = Jagged(one_history.values, torch.zeros(1, dtype=torch.long))
        weights = match.weights["preferred_categories"]
        expected_served = torch.stack(
            [_hand_match(hist, category[i : i + 1], weights, newest_first=False)[0] for i in range(64)]
        )
        torch.testing.assert_close(served - before, expected_served, rtol=1e-4, atol=1e-4)


def test_match_needs_a_shared_vocabulary_or_fails_in_one_line(tiny) -> None:  # type: ignore[no-untyped-def]
    lone = tuple(
        FeatureSpec(f.name, f.side, f.kind, "interests") if f.kind is Kind.SEQUENCE else f for f in tiny.schema.features
    )
    schema = FeatureSchema(lone, {**tiny.schema.vocab_sizes, "interests": 5})
    with pytest.raises(ValueError, match="match: no ad-side id field shares a vocabulary with a user-side sequence"):
        build_model("hit", schema, {"match": True})


@pytest.mark.parametrize("name", ["hit", "dcn", "lr"])
def test_pairs_add_a_free_weight_per_narrow_request_id_and_ad_id(tiny, batch, name: str) -> None:  # type: ignore[no-untyped-def]
    """pairs=True adds sum_r sum_a T_{r,a}[id_a][id_r] over the narrow request-side id fields r and
    the ad's id fields a to the logit and nothing else, in training and through the served path;
    a user id (wider than PAIR_WIDTH) is not crossed."""
    torch.manual_seed(0)
    base = {"linear": True} if name == "hit" else {}
    model = build_model(name, tiny.schema, base | {"pairs": True}).eval()
    plain = build_model(name, tiny.schema, base).eval()
    pairs = model.pairs
    assert isinstance(pairs, IdPairs)
    narrow = [f.name for f in pairs.request]
    assert narrow == [
        f.name
        for f in tiny.schema.user_fields
        if f.kind is Kind.SPARSE and tiny.schema.vocab_sizes[f.vocab or ""] + 1 <= PAIR_WIDTH
    ]
    assert "user_id" not in narrow and len(narrow) >= 2  # segment and age band, not the user id
    feats, _ = batch
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        tables = {f.name: cast(torch.Tensor, pairs.tables.tables[f.name].weight) for f in pairs.tables.embedded}
        for table in tables.values():
            table.normal_()
        missing = plain.load_state_dict(model.state_dict(), strict=False)
        assert not missing.missing_keys and all(k.startswith("pairs.") for k in missing.unexpected_keys)
        expected = torch.zeros(64)
        for row in range(64):  # a plain loop over every (request field, ad field) pair
            offset = 0
            for f, width in zip(pairs.request, pairs.widths, strict=True):
                for a, table in tables.items():
                    expected[row] += table[
                        int(cast(torch.Tensor, feats[a])[row]), offset + int(cast(torch.Tensor, feats[f.name])[row])
                    ]
                offset += width
        torch.testing.assert_close(model(feats) - plain(feats), expected, rtol=1e-4, atol=1e-4)
        one = {
            k: (Jagged(v.values[: int(v.offsets[1])], v.offsets[:1]) if isinstance(v, Jagged) else v[:1])
            for k, v in feats.items()
        }
        served = model.score(model.encode_user(one), model.encode_ad(feats)) - plain.score(
            plain.encode_user(one), plain.encode_ad(feats)
        )
        expected_served = torch.zeros(64)
        for row in range(64):  # the first row's user against every ad
            offset = 0
            for f, width in zip(pairs.request, pairs.widths, strict=True):
                for a, table in tables.items():
                    expected_served[row] += table[
                        int(cast(torch.Tensor, feats[a])[row]), offset + int(cast(torch.Tensor, feats[f.name])[0])
                    ]
                offset += width
        torch.testing.assert_close(served, expected_served, rtol=1e-4, atol=1e-4)
        assert model.regularizer() > plain.regularizer()  # the tables are under the embedding prior


def test_pairs_need_a_narrow_request_field_or_fail_in_one_line(tiny) -> None:  # type: ignore[no-untyped-def]
    wide = {**tiny.schema.vocab_sizes}
    for f in tiny.schema.user_fields:
        if f.kind is Kind.SPARSE:
            wide[f.vocab or ""] = max(wide[f.vocab or ""], PAIR_WIDTH)
    with pytest.raises(ValueError, match="pairs: needs an ad-side id field and a user or context id field of at most"):
        build_model("dcn", FeatureSchema(tiny.schema.features, wide), {"pairs": True})


def test_drift_names_a_dense_request_field_or_fails_in_one_line(tiny) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"not dense user or context fields of the schema: \['category'\]"):
        build_model("hit", tiny.schema, {"drift": ["category"]})
    with pytest.raises(ValueError, match="drift must be a list of field names"):
        build_model("dcn", tiny.schema, {"drift": "ts"})
