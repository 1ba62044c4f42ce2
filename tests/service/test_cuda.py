"""The scoring path on a GPU: the same answers as on the CPU, with and without user-tower batching.

Skipped where CUDA is not available (CI); run where a device is lent (results/scripts/run_gpu.sh).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from service.batching import UserTowerBatcher
from service.schemas import Candidates, PrerankRequest, UserInput
from service.scorer import Scorer
from tools.bench import CONFIGS, _version, run_bench

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

N_ADS = 20_000


def _requests(version, n: int = 16, candidates: int = 5000) -> list[PrerankRequest]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    ids = version.index.ad_ids
    return [
        PrerankRequest(
            user=UserInput(id=str(i)),
            top_k=200,
            candidates=Candidates(ad_ids=ids[rng.choice(len(ids), candidates, replace=False)].tolist()),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("model", ["hit", "dssm", "inttower", "cold"])
def test_cuda_scores_equal_cpu_scores(model: str) -> None:
    cfg = next(c for c in CONFIGS if c.model == model)
    cpu, gpu = _version(cfg, N_ADS, "float32"), _version(cfg, N_ADS, "float32", device="cuda")
    assert gpu.rows.device.type == "cuda"
    for request in _requests(cpu, n=4):
        want = Scorer("cpu").prerank(request, cpu)
        got = Scorer("cuda").prerank(request, gpu)
        by_id = dict(zip(want.ad_ids.tolist(), want.pctr.tolist(), strict=True))
        np.testing.assert_allclose(got.pctr, [by_id[a] for a in got.ad_ids.tolist()], rtol=1e-4, atol=1e-6)
        assert len(set(got.ad_ids[:150].tolist()) & set(want.ad_ids[:200].tolist())) == 150  # same top, up to ties


def test_cuda_user_batching_under_concurrency_equals_one_at_a_time() -> None:
    cfg = next(c for c in CONFIGS if c.model == "hit")
    gpu = _version(cfg, N_ADS, "float32", device="cuda")
    requests = _requests(gpu, n=32, candidates=2000)
    want = [Scorer("cuda").prerank(r, gpu) for r in requests]
    batcher = UserTowerBatcher(max_batch=16, window_us=500)
    scorer = Scorer("cuda", batcher=batcher)
    got: dict[int, object] = {}

    def work(i: int) -> None:
        for j in range(i, len(requests), 8):
            got[j] = scorer.prerank(requests[j], gpu)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    batcher.close()
    for j, w in enumerate(want):
        g = got[j]
        np.testing.assert_array_equal(g.ad_ids, w.ad_ids)  # type: ignore[attr-defined]
        np.testing.assert_allclose(g.pctr, w.pctr, rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]


def test_kernel_bench_runs_on_the_device() -> None:
    configs = tuple(c for c in CONFIGS if c.label == "hit 2x16")
    result = run_bench(5000, 20, configs, (1000,), ("float32", "bfloat16"), "cuda")
    assert result["device"].startswith("cuda (") and result["copy_bandwidth_gb_s"] > 100
    assert [c["dtype"] for c in result["cells"]] == ["float32", "bfloat16"]
    assert all(0 < c["score"]["p50_ms"] <= c["score"]["p99_ms"] for c in result["cells"])
