"""The model contract: ``features(x)`` is the penultimate vector, ``head`` maps it to logits.

Inputs are pixels in [0, 1]; any normalization lives inside the model so that attacks work in
pixel space and eps means what the threat model says.
"""
from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, RkbenchError
from ..registry import Registry


class Classifier(nn.Module, metaclass=ABCMeta):
    """Base of every rkbench model: subclasses define ``extract`` (pixels -> penultimate features)."""

    def __init__(self, feature_dim: int, num_classes: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @abstractmethod
    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized pixels -> the penultimate feature vector [B, feature_dim]."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.extract(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features from one pass (methods that need both use this)."""
        features = self.features(x)
        return self.head(features), features


# A model factory takes (num_classes, in_channels, image_size, **options) and returns a Classifier.
ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, num_classes: int, input_shape: Sequence[int], **options) -> nn.Module:
    factory = MODELS.get(name)
    check_model_options(name, options)
    channels, height, _ = input_shape
    return factory(num_classes=num_classes, in_channels=channels, image_size=height, **options)


def check_model_options(name: str, options: dict) -> dict:
    """Reject options the model's factory does not take (a typo would otherwise be silently ignored).
    Returns the options, normalized by the factory's own ``check_options`` hook when it has one
    (e.g. timm: a checkpoint's sha256 joins the options, and so the run id)."""
    factory = MODELS.get(name)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:  # a plugin registered something without a signature
        raise ConfigError(f"model {name!r}: its factory {factory!r} has no readable signature ({exc})") from None
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        allowed = set(parameters) - {"num_classes", "in_channels", "image_size"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"model {name!r} takes no option {unknown[0]!r}; it takes: "
                              f"{', '.join(sorted(allowed)) or 'none'}")
    hook = getattr(factory, "check_options", None)
    if not hook:
        return options
    try:
        return hook(options)
    except RkbenchError:
        raise
    except Exception as exc:  # a plugin's hook that raises: one line naming it, not a traceback
        raise ConfigError(f"model {name!r}: its check_options raised {type(exc).__name__}: {exc}") from None


def rebuild_options(name: str, options: dict) -> dict:
    """The options that rebuild a trained ``name`` around saved weights: without those that only
    choose its starting weights (a factory's ``init_options``, e.g. timm's ``checkpoint``)."""
    dropped = set(getattr(MODELS.get(name), "init_options", ()))
    return {key: value for key, value in (options or {}).items() if key not in dropped}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
