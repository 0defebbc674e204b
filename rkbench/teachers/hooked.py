"""Penultimate features for networks that do not expose ``features(x)`` (RobustBench's zoo,
pyautoattack's example ResNet, arbitrary third-party classifiers).

The penultimate vector is taken as the input of the network's last ``nn.Linear`` (the classifier
head), captured by a forward pre-hook, so the wrapped network runs its own ``forward`` unchanged
and ``forward(x)`` gives exactly its logits.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import RkbenchError


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` in module registration order (the classifier head of a CNN/ViT)."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise RkbenchError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return found[-1]


class PenultimateFeatures(nn.Module):
    """``forward`` = the wrapped network's logits; ``features`` / ``forward_with_features`` add the
    input of its last linear layer (flattened), captured by a hook during that same forward pass."""

    def __init__(self, model: nn.Module, head: str | None = None):
        super().__init__()
        self.model = model
        if head is None:
            head, _ = last_linear(model)
        module = model.get_submodule(head)
        if not isinstance(module, nn.Linear):
            raise RkbenchError(f"{type(model).__name__}.{head} is a {type(module).__name__}, not nn.Linear")
        self.head_name = head
        self._capturing = False
        self._captured: torch.Tensor | None = None
        module.register_forward_pre_hook(self._capture)

    def _capture(self, module, inputs) -> None:
        if self._capturing:  # only when asked: a plain forward (attacks) keeps no extra tensor alive
            self._captured = inputs[0]

    @property
    def head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_name)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._capturing, self._captured = True, None
        try:
            logits = self.model(x)
            features = self._captured
        finally:
            self._capturing, self._captured = False, None
        if features is None:
            raise RkbenchError(f"{type(self.model).__name__}: its layer {self.head_name!r} was not called in "
                               f"forward, so it gives no penultimate features")
        return logits, features.flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[1]
