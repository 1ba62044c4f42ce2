"""Published MovieLens-1M test AUCs that our tables compare with (MODELS.md §10.1), in one place."""

from __future__ import annotations

__all__ = ["BEST_PUBLISHED", "PUBLISHED_BY_SOURCE", "SOURCES", "published_in"]

#: Column order of PUBLISHED_BY_SOURCE.
SOURCES = ("IntTower paper", "HIT paper", "FIT slides")

#: Every published MovieLens-1M AUC per model: IntTower paper Table 2, HIT paper Table 2, FIT slides.
PUBLISHED_BY_SOURCE: dict[str, tuple[float | None, float | None, float | None]] = {
    "lr": (0.8501, None, None),
    "dssm": (0.8697, 0.8697, 0.8695),
    "dat": (0.8712, 0.8712, 0.8784),
    "cold": (0.8836, 0.8836, 0.9009),
    "deepfm": (0.8920, 0.8920, None),
    "dcn": (0.8964, 0.8964, None),
    "inttower": (0.8974, 0.8974, 0.9036),
    "hit": (None, 0.9048, None),
    "fit": (None, None, 0.9225),
}


def published_in(source: str, model: str) -> float | None:
    """The AUC `source` (one of SOURCES) published for `model`, or None."""
    return PUBLISHED_BY_SOURCE.get(model, (None, None, None))[SOURCES.index(source)]


def _best(model: str) -> tuple[float, str]:
    value, source = max((v, s) for v, s in zip(PUBLISHED_BY_SOURCE[model], SOURCES, strict=True) if v is not None)
    return value, source


#: Best published number per model and its source.
BEST_PUBLISHED: dict[str, tuple[float, str]] = {model: _best(model) for model in PUBLISHED_BY_SOURCE}
