"""pCTR calibration: a monotone map from the model's logit to a click probability.

Stored in the artifact as `calibration.json` (no pickle) and applied wherever a pCTR is produced:
the service's ranking and the offline metrics. The fitting lives in `offline/calibrate.py`; this
module only evaluates.

Forms:
    identity   p = sigmoid(z + offset)
    platt      p = sigmoid(a * (z + offset) + b)          (temperature scaling when b = 0)
    isotonic   p = interp(z + offset, knots_x, knots_y)   (piecewise linear, flat outside the knots)

`offset` is the negative down-sampling correction: with negatives kept at rate r during training,
log-odds are over-estimated by -log(r), so offset = log(r).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CALIBRATION_FILE", "METHODS", "Calibrator"]

CALIBRATION_FILE = "calibration.json"
METHODS = ("identity", "platt", "isotonic")


@dataclass(frozen=True)
class Calibrator:
    """A fitted logit -> pCTR map (see the module docstring)."""

    method: str = "identity"
    offset: float = 0.0
    a: float = 1.0
    b: float = 0.0
    knots_x: tuple[float, ...] = field(default=())
    knots_y: tuple[float, ...] = field(default=())
    fit: dict[str, Any] = field(default_factory=dict)  # how it was chosen (validation LogLoss per method)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if self.method == "isotonic":
            x, y = np.asarray(self.knots_x), np.asarray(self.knots_y)
            if len(x) < 2 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic calibration needs >= 2 knots, x and y both non-decreasing")
            if y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic calibration values must lie in [0, 1]")
        if not all(math.isfinite(v) for v in (self.offset, self.a, self.b)):
            raise ValueError("calibration parameters must be finite")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """pCTR for raw logits, float32, same shape."""
        z = np.asarray(logits, dtype=np.float64) + self.offset
        if self.method == "isotonic":
            p = np.interp(z, *self._knots)
        else:
            p = 1.0 / (1.0 + np.exp(-(self.a * z + self.b) if self.method == "platt" else -z))
        return p.astype(np.float32)

    @functools.cached_property
    def _knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The knots as float64 arrays, converted once (np.interp would convert the tuples per call)."""
        return np.asarray(self.knots_x, dtype=np.float64), np.asarray(self.knots_y, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}")
        values = dict(data)
        for key in ("knots_x", "knots_y"):
            values[key] = tuple(float(v) for v in values.get(key, ()))
        return cls(**values)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> Calibrator:
        """The artifact's calibrator; identity when the artifact has none (older artifacts)."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.exists():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))
