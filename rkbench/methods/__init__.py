"""Methods (one file each): a loss over a batch, registered with ``@METHODS.register``."""
from . import ard, at, kd, natural  # noqa: F401  (registers the built-in methods)
from .base import METHODS, Batch, Method, MethodParams, build_method, model_mode
from .losses import kl_divergence

__all__ = ["METHODS", "Batch", "Method", "MethodParams", "build_method", "model_mode", "kl_divergence"]
