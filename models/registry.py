"""Name -> model class registry; artifacts name their model and the server builds it from here."""

from __future__ import annotations

import dataclasses
from typing import Any

from models.base import ModelConfig, PrerankModel
from models.dat import DAT
from models.dssm import DSSM
from models.features import FeatureSchema
from models.fit import FIT
from models.hit import HIT
from models.inttower import IntTower
from models.single import COLD, DCN, LR, DeepFM

__all__ = ["MODELS", "build_model", "config_from_dict", "model_class"]

MODELS: dict[str, type[PrerankModel]] = {
    cls.name: cls for cls in (HIT, DSSM, DAT, IntTower, FIT, COLD, LR, DeepFM, DCN)
}


def model_class(name: str) -> type[PrerankModel]:
    """The class registered under `name`; ValueError naming the choices otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def config_from_dict(name: str, values: dict[str, Any]) -> ModelConfig:
    """Builds the model's config dataclass; unknown keys are an error."""
    cls = model_class(name).config_class
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown {name} config keys {sorted(unknown)}; known: {sorted(known)}")
    coerced: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**coerced)


def build_model(name: str, schema: FeatureSchema, config: ModelConfig | dict[str, Any]) -> PrerankModel:
    """Instantiates a registered model."""
    cfg = config_from_dict(name, config) if isinstance(config, dict) else config
    return model_class(name)(schema, cfg)
