"""Pure PyTorch pre-ranking models shared by the offline job and the service."""

from models.base import ModelConfig, PrerankModel
from models.dssm import DSSM, DSSMConfig
from models.features import FeatureSchema, FeatureSpec, Jagged, Kind, Side, Vocabulary
from models.hit import HIT, HITConfig
from models.registry import MODELS, build_model

__all__ = [
    "DSSM",
    "HIT",
    "MODELS",
    "DSSMConfig",
    "FeatureSchema",
    "FeatureSpec",
    "HITConfig",
    "Jagged",
    "Kind",
    "ModelConfig",
    "PrerankModel",
    "Side",
    "Vocabulary",
    "build_model",
]
