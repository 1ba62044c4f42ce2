"""The synthetic dataset spec: synthetic:N ads, optionally :ROWS log rows (the scale benchmarks)."""

from __future__ import annotations

import pytest


def test_synthetic_spec_takes_ads_and_log_rows() -> None:
    from offline.data import load_dataset

    small = load_dataset("synthetic:300:5000", "clean", None, 0)
    assert len(small.ad_ids) == 300 and len(small.train) + len(small.valid) + len(small.test) == 5000
    for bad in ("synthetic:x", "synthetic:10:0", "synthetic:1:2:3"):
        with pytest.raises(ValueError, match="synthetic:N"):
            load_dataset(bad, "clean", None, 0)
