"""Model families (one file each). Every model exposes ``features(x)`` and ``head``."""
from . import mobilenetv2, resnet, small, timm, wideresnet  # noqa: F401  (registers the built-in models)
from .base import MODELS, Classifier, build_model, check_model_options, count_parameters, rebuild_options

__all__ = ["MODELS", "Classifier", "build_model", "check_model_options", "count_parameters", "rebuild_options"]
