"""The synthetic dataset spec: synthetic:N ads, optionally :ROWS log rows and :ids64 (the scale benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest


def test_synthetic_spec_takes_ads_and_log_rows() -> None:
    from offline.data import load_dataset

    small = load_dataset("synthetic:300:5000", "clean", None, 0)
    assert len(small.ad_ids) == 300 and len(small.train) + len(small.valid) + len(small.test) == 5000
    sparse = load_dataset("synthetic:300:5000:ids64", "clean", None, 0)
    assert sparse.ad_ids.dtype == np.int64 and len(np.unique(sparse.ad_ids)) == 300
    assert sparse.ad_ids.min() >= 2**40 and not (np.diff(sparse.ad_ids) > 0).all()  # 64-bit, in no order
    assert np.array_equal(sparse.test.labels, small.test.labels)  # only the external ids differ
    assert sparse.checksum != small.checksum
    assert np.array_equal(load_dataset("synthetic:300:5000:ids64", "clean", None, 0).ad_ids, sparse.ad_ids)
    for bad in ("synthetic:x", "synthetic:10:0", "synthetic:1:2:3", "synthetic:ids64", "synthetic:5:ids32"):
        with pytest.raises(ValueError, match="synthetic:N"):
            load_dataset(bad, "clean", None, 0)
