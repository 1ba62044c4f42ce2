"""`prerank bench` runs the service's scoring path for every benchmarked model and dtype."""

from __future__ import annotations

from pathlib import Path

from prerank.bench import main
from tools.bench import CONFIGS, markdown, run_bench


def test_bench_cells_for_every_model_and_dtype() -> None:
    configs = tuple(c for c in CONFIGS if c.model in {"hit", "fit", "cold"})
    result = run_bench(n_ads=2000, repeats=3, configs=configs, candidates=(100, 500), dtypes=("float32", "int8"))
    assert len(result["cells"]) == len(configs) * 2 * 2 and result["copy_bandwidth_gb_s"] > 0
    for cell in result["cells"]:
        assert cell["repeats"] == 3 and cell["efficiency"] > 0
        assert cell["score"]["p50_ms"] <= cell["score"]["p99_ms"]
        assert 0 < cell["gather_p50_ms"] + cell["compute_p50_ms"] <= 1.5 * cell["score"]["p99_ms"]
    by = {(c["model"], c["dtype"], c["candidates"]): c for c in result["cells"]}
    # int8 rows are a quarter of fp32 rows; COLD's rows are its embedded features
    assert by[("hit", "int8", 500)]["bytes_read"] * 4 == by[("hit", "float32", 500)]["bytes_read"]
    assert "| fit K32 4x4x16 | int8 | 500 |" in markdown(result)


def test_bench_cli_writes_results_and_rejects_unknown_models(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--ads", "1000", "--repeats", "2", "--candidates", "100", "--dtypes", "bfloat16"]
    assert main([*argv, "--models", "dssm"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert main([*argv, "--models", "nope"]) == 2
    if not __import__("torch").cuda.is_available():
        assert main([*argv, "--device", "cuda"]) == 2
