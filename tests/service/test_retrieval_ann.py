"""FAISS retrieval on a corpus large enough that the search is not exhaustive (5,000 ads x 2 heads)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from models.artifact import Bundle, IndexData
from models.features import FeatureSchema, FeatureSpec, Kind, Side, Vocabulary
from models.registry import build_model
from models.rows import AdRows
from models.tables import FeatureTable
from offline.ann import build_ann
from service.scorer import Scorer
from service.store import ServingVersion, build_version

N_ADS, N_USERS = 5000, 64
SCHEMA = FeatureSchema(
    (
        FeatureSpec("user_id", Side.USER, Kind.SPARSE, "user_id"),
        FeatureSpec("ad_id", Side.AD, Kind.SPARSE, "ad_id"),
    ),
    {"user_id": N_USERS, "ad_id": N_ADS},
)


@pytest.fixture(scope="module")
def version() -> ServingVersion:
    torch.manual_seed(0)
    model = build_model("hit", SCHEMA, {}).eval()
    with torch.no_grad():  # stored rows with varying norms: each ad scaled by a factor in [0.2, 3]
        encoded = model.encode_ad({"ad_id": torch.arange(1, N_ADS + 1)})
        assert isinstance(encoded, torch.Tensor)
        vectors = encoded * torch.empty(N_ADS, 1, 1).uniform_(0.2, 3.0)
    norms = vectors.flatten(1).norm(dim=1)
    assert float(norms.max() / norms.min()) > 3
    bundle = Bundle(
        model,
        SCHEMA,
        {k: Vocabulary([str(i) for i in range(v)]) for k, v in SCHEMA.vocab_sizes.items()},
        {"model_version": "hit-ann"},
    )
    index = IndexData(
        manifest={"version": "v000001", "model_version": "hit-ann", "dtype": "float32"},
        ad_ids=np.arange(N_ADS, dtype=np.int64),
        rows=AdRows.quantize(vectors, "float32"),
        bids=np.ones(N_ADS, np.float32),
        user_ids=[str(i) for i in range(N_USERS)],
        users=FeatureTable(N_USERS, sparse={"user_id": np.arange(1, N_USERS + 1)}),
    )

    return build_version(bundle, index, ann=build_ann(vectors), ann_pairs=build_ann(vectors, "pairs"))


def _users(scorer: Scorer, version: ServingVersion) -> list[torch.Tensor]:
    return [scorer.encode_user(version, version.index.users.take(np.array([u]))) for u in range(N_USERS)]


def test_build_ann_top1_equals_brute_force_maximum_inner_product(version: ServingVersion) -> None:
    heads = version.rows.vectors.flatten(0, 1).numpy()  # (N * H_a, p)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(200, heads.shape[1])).astype(np.float32)
    assert type(version.ann).__name__ == "IndexIVFFlat" and version.ann.nprobe < version.ann.nlist
    _, hits = version.ann.search(np.hstack([queries, np.zeros((200, 1), np.float32)]), 1)
    exact = (queries @ heads.T).argmax(1)
    assert float((hits[:, 0] == exact).mean()) >= 0.97


def test_ann_mode_recall_against_exact_when_the_search_is_not_exhaustive(version: ServingVersion) -> None:
    scorer = Scorer()
    k = 10
    per_head = 4 * k * version.rows.vectors.shape[1]
    assert per_head * 2 < version.ann.ntotal / 50  # each head's search visits a small part of the corpus
    recalls = []
    for user in _users(scorer, version):
        approx = scorer.candidates(version, user, k, mode="ann")
        exact = scorer.candidates(version, user, k, mode="exact")
        assert len(approx) == k
        recalls.append(len(np.intersect1d(approx, exact)) / k)
    assert 0.9 <= float(np.mean(recalls)) < 1.0 + 1e-9


def test_concurrent_retrieves_of_different_k_do_not_share_search_state(version: ServingVersion) -> None:
    scorer = Scorer()
    users = _users(scorer, version)[:16]
    probe_before = version.ann.nprobe, version.ann_pairs.nprobe
    serial = {(u, k): scorer.candidates(version, users[u], k, mode="ann").tolist() for u in range(16) for k in (2, 60)}
    results: dict[tuple[int, int], list[list[int]]] = {key: [] for key in serial}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                for u in range(16):
                    results[(u, k)].append(scorer.candidates(version, users[u], k, mode="ann").tolist())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (2, 60, 2, 60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (version.ann.nprobe, version.ann_pairs.nprobe) == probe_before  # shared indexes are never mutated
    for key, runs in results.items():
        assert all(sorted(r) == sorted(serial[key]) for r in runs), key


def test_large_corpora_get_an_ivf_index_with_recall_against_exact(version: ServingVersion) -> None:
    from offline.ann import ivf_lists

    assert ivf_lists(20_000_000) == 8192 and ivf_lists(2_000_000) == 2048 and ivf_lists(10_000) == 256
    ivf = _corpus_version(version, version.rows.vectors.float(), pairs=True)
    assert type(ivf.ann).__name__ == "IndexIVFFlat" and ivf.ann.nlist == 256 and ivf.ann.nprobe == 64
    assert ivf.ann.ntotal == N_ADS * 2
    assert type(ivf.ann_pairs).__name__ == "IndexIVFScalarQuantizer" and ivf.ann_pairs.ntotal == N_ADS * 2
    assert ivf.ann_pairs.nprobe == 16  # its fp16 lists cost more per list to scan (offline/ann.py)
    scorer = Scorer()
    recalls = []
    for user in _users(scorer, ivf):
        approx = scorer.candidates(ivf, user, 10, mode="ann")
        exact = scorer.candidates(ivf, user, 10, mode="exact")
        recalls.append(len(np.intersect1d(approx, exact)) / 10)
    assert float(np.mean(recalls)) >= 0.95


def test_ivf_widens_its_probe_where_a_clustered_corpus_leaves_the_probed_lists_empty(version: ServingVersion) -> None:
    from service.scorer import _ann_search

    base = version.rows.vectors.float()
    # 4 distinct ads repeated 1,250 times each, with tiny noise: most of the 256 lists sit on a few
    # points, and the 64 nearest a query hold fewer heads than a wide search asks for
    clustered = base[torch.arange(N_ADS) % 4] + 1e-6 * torch.randn_like(base)
    ivf = _corpus_version(version, clustered, pairs=True)
    queries = np.hstack([clustered[:8, 0].numpy(), np.zeros((8, 1), np.float32)])
    import faiss

    fixed = ivf.ann.search(queries, 5000, params=faiss.SearchParametersIVF(nprobe=ivf.ann.nprobe))[1]  # type: ignore[attr-defined,call-arg]
    widened = _ann_search(ivf.ann, queries, 5000)
    assert (fixed < 0).any()  # the built-in probe alone finds too few heads here
    assert (widened >= 0).all()
    scorer = Scorer()
    user = _users(scorer, ivf)[0]
    assert len(scorer.candidates(ivf, user, 10, mode="ann")) == 10


def _corpus_version(version: ServingVersion, vectors: torch.Tensor, pairs: bool) -> ServingVersion:
    index = IndexData(**{**version.index.__dict__, "rows": AdRows.quantize(vectors, "float32")})
    index.ad_ids = np.arange(len(vectors), dtype=np.int64)
    index.bids = np.ones(len(vectors), np.float32)
    ann_pairs = build_ann(vectors, "pairs") if pairs else None
    return build_version(version.bundle, index, ann=build_ann(vectors), ann_pairs=ann_pairs)


def test_the_pairs_index_finds_ads_that_match_both_user_heads_moderately(version: ServingVersion) -> None:
    """MaxSim = max over (j, k) of <u_1, a_j> + <u_2, a_k>. Ads scoring 0.7 + 0.7 on two different
    heads rank first, yet every single-head query (and the sum) ranks 2,000 one-sided ads above
    them: only the [u_1, u_2] x [a_j, a_k] search finds them."""
    gen = torch.Generator().manual_seed(0)
    p = version.rows.vectors.shape[-1]
    e1, e2 = torch.zeros(p), torch.zeros(p)
    e1[0], e2[1] = 1.0, 1.0

    def noisy(n: int) -> torch.Tensor:
        return 0.01 * torch.randn(n, 2, p, generator=gen)

    one_sided_1 = e1.expand(2000, 2, p) + noisy(2000)  # MaxSim ~1.0; first for u_1 and for u_1 + u_2
    one_sided_2 = e2.expand(2000, 2, p) + noisy(2000)  # MaxSim ~1.0; first for u_2 and for u_1 + u_2
    crossed = torch.stack([0.7 * e1, 0.7 * e2]).expand(40, 2, p) + noisy(40)  # MaxSim ~1.4
    vectors = torch.cat([one_sided_1, one_sided_2, crossed]).contiguous()
    user = torch.stack([e1, e2]).unsqueeze(0)
    scorer = Scorer()
    with_pairs = _corpus_version(version, vectors, pairs=True)
    exact = scorer.candidates(with_pairs, user, 10, mode="exact")
    assert set(exact.tolist()) <= set(range(4000, 4040))
    np.testing.assert_array_equal(np.sort(scorer.candidates(with_pairs, user, 10, mode="ann")), np.sort(exact))
    single = scorer.candidates(_corpus_version(version, vectors, pairs=False), user, 10, mode="ann")
    assert len(np.intersect1d(single, exact)) == 0  # what the single-head searches alone return
    with pytest.raises(ValueError, match="2 heads"):
        build_ann(torch.randn(10, 3, 4), "pairs")
    with pytest.raises(ValueError, match="view"):
        build_ann(vectors, "triples")


def test_ann_candidates_follow_removals_pauses_and_appended_rows(version: ServingVersion) -> None:
    """The ANN index covers the base rows only: removed and paused ads leave its hits, and rows
    a delta appended are scored with them."""
    from storage.deltas import AdDelta

    scorer = Scorer()
    user = _users(scorer, version)[3]
    best = scorer.candidates(version, user, 10, mode="exact")
    removed, paused = version.row_ids[best[:3]], version.row_ids[best[3:6]]
    top = version.rows.vectors[best[0] : best[0] + 1] * 2.0  # a new ad that outscores every base ad
    delta = AdDelta(
        base_version=version.version,
        model_version=version.model_version,
        upsert_ids=np.array([10**6], np.int64),
        upsert_rows=AdRows.quantize(top, "float32"),
        upsert_bids=np.ones(1, np.float32),
        upsert_hashes=np.zeros(1, np.uint64),
        remove_ids=removed,
        seq=1,
    )
    changed = version.with_delta(delta).with_paused(2, paused)
    got = scorer.candidates(changed, user, 10, mode="ann")
    exact = scorer.candidates(changed, user, 10, mode="exact")
    ids = set(changed.row_ids[got].tolist())
    assert 10**6 in ids and not ids & set(removed.tolist()) and not ids & set(paused.tolist())
    assert len(np.intersect1d(got, exact)) >= 9
