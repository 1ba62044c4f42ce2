"""Entry points: one module per job, each with `main(argv)`; `prerank JOB ...` dispatches to them.

This layer wires the system together: it may import `offline`, `service`, `storage`, `tools` and
`loadtest`, which never import each other's way up (import-linter checks it).
"""

#: Job name -> (module under prerank/, one-line help). `prerank JOB --help` shows each job's flags.
JOBS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model and write an artifact directory"),
    "export": ("export", "run the ad tower over every ad and publish an index version"),
    "ads": ("ads", "pause or resume ads on every replica at once (budget out)"),
    "experiment": ("experiment", "start/end an A/B experiment or a shadow candidate on every replica"),
    "ingest": ("ingest", "consume impression/click events into the online user store (Redis Streams)"),
    "versions": ("versions", "list the published versions of a store"),
    "rollback": ("rollback", "point the store's live version at an earlier version"),
    "serve": ("serve", "start the HTTP service"),
    "demo": ("demo", "train HIT, publish, serve and send sample requests (the quick start)"),
    "evaluate": ("evaluate", "AUC, calibrated LogLoss, ECE, GAUC, revenue@k, consistency and reliability of artifacts"),
    "bench": ("bench", "benchmark the scoring path per model, dtype and candidate count"),
    "generate": ("generate", "write a world: an impression log with known click probabilities, Bayes/attainable AUC"),
    "generate-scale": (
        "generate_scale",
        "write a known-answer log at production size (Parquet shards, 10M ads/50M users/100M rows)",
    ),
    "worlds": ("worlds", "train every model on generated worlds (several seeds) against their attainable AUC"),
    "tune": ("tune", "hyper-parameter search on the validation split with Optuna (resumable SQLite study)"),
    "zoo": ("zoo", "train every model on MovieLens-1M (both protocols, several seeds) and report"),
    "quant-auc": ("quant", "test AUC with ad vectors stored as fp32, bf16 and int8"),
    "retrieval-recall": ("recall", "FAISS recall@K of /retrieve against exact scoring"),
    "report": ("report", "rebuild a results table from training runs"),
    "trace-overhead": ("trace_overhead", "p50 of /prerank with tracing absent, off (default) and on"),
    "openloop": ("openloop", "open-loop capacity sweep with k6 (fixed arrival rates, p99.9, dropped arrivals)"),
    "profile": ("profile", "py-spy profile of the server under a fixed open-loop load: share of time per stage"),
    "freshness": ("freshness", "event/delta/pause -> visible latency under open-loop load, 1 and 2 replicas"),
    "shadow-bench": ("shadow_bench", "live p99 under open-loop load with and without a slow shadow candidate"),
    "stream-bench": ("stream_bench", "peak RSS and rows/s of streamed against in-memory training by log size"),
    "sparse-bench": ("sparse_bench", "training step time against vocabulary size, dense vs sparse embeddings"),
    "ads-scale-bench": (
        "ads_scale_bench",
        "export, publish, load, hot swap, latency and ANN recall against corpus size",
    ),
    "user-store-bench": ("user_store_bench", "Redis and replica memory of the user store against the user count"),
    "loadtest": ("loadtest", "headless Locust steps per candidate count against served stores"),
    "soak": ("soak", "steady load while a new version is published every minute"),
    "download-movielens": ("download", "download the official ml-1m.zip (needs a network)"),
}

__all__ = ["JOBS"]
