"""Methods (one file each): a loss over a batch, registered with ``@METHODS.register``."""
from . import (  # noqa: F401  (importing registers the built-in methods)
    adaad, ard, at, fast_ard, fgsm_rs, free_at, iad, kd, kdiga, mtard, natural, rrm, rslad, trades,
)
from .adversarial import AdversarialMethod, AdversarialParams
from .base import METHODS, Batch, LossTerms, Method, MethodParams, build_method, model_mode, total_loss
from .losses import kl_divergence

__all__ = ["AdversarialMethod", "AdversarialParams", "METHODS", "Batch", "LossTerms", "Method", "MethodParams",
           "build_method", "model_mode", "kl_divergence", "total_loss"]
