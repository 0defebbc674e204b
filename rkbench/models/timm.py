"""Any timm architecture as an rkbench model: ``{model: timm, arch: resnet18}``.

Created with ``pretrained=False`` unless ``pretrained: true``: then timm loads its pretrained weights
(adapted by timm to the classes, channels and image size: a ViT's patch and position embeddings are
resampled), from its cache or, on a machine with network access, downloaded by timm. Offline and not
in timm's cache, that is one line naming the architecture (exit 2), never a traceback. ``checkpoint``
names a local state dict to start from (timm's own keys or a saved rkbench ``timm`` model), loaded with
``weights_only=True``. The file's sha256 is added to the options (``checkpoint_sha256``) when the
suite is checked, so it is part of the run id and a changed file is a different run.

Penultimate features are timm's ``forward_head(forward_features(x), pre_logits=True)`` and the
logits its classifier (``get_classifier()``) applied to them. ``normalize: true`` standardizes
pixels with the architecture's pretrained mean/std inside the model (inputs stay in [0, 1]).
Vision transformers get ``img_size`` = the dataset's image size.

```yaml
students:
  - {name: r18, model: timm, arch: resnet18}
  - {name: vit, model: timm, arch: vit_tiny_patch16_224, model_args: {patch_size: 4}}
```
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DataUnavailableError
from ..weights import file_sha256, fit_weights, load_state_dict
from .base import MODELS


class TimmClassifier(nn.Module):
    """A timm model under rkbench's contract: ``features(x)``, ``head``, ``forward_with_features``."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        self.model = model
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    @property
    def feature_dim(self) -> int:
        return self.model.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features


def check_arch(arch: str) -> str:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; see timm.list_models()"
        raise ConfigError(f"arch: timm has no architecture {arch!r}{hint}")
    return arch


def check_options(options: dict) -> dict:
    """Called when the suite is checked: a known ``arch``; a ``checkpoint`` that exists, whose
    sha256 joins the options (and so the run id)."""
    options = dict(options)
    arch = check_arch(str(options.get("arch", "resnet18")))
    if options.get("pretrained"):  # fetched now (into timm's cache), or one line before anything trains
        try:
            create(arch, 10, 3, 224, {}, pretrained=True)
        except DataUnavailableError as exc:
            raise ConfigError(f"pretrained: {exc}") from None
    if options.get("checkpoint"):
        path = Path(options["checkpoint"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"checkpoint: file not found: {path}")
        digest = file_sha256(path)
        if options.get("checkpoint_sha256") not in (None, digest):
            raise DataUnavailableError(f"{path} changed since the suite was planned (sha256 {digest[:12]}, "
                                       f"expected {str(options['checkpoint_sha256'])[:12]})")
        options["checkpoint"], options["checkpoint_sha256"] = str(options["checkpoint"]), digest
    return options


def create(arch: str, num_classes: int, in_channels: int, image_size: int, model_args: dict,
           pretrained: bool = False) -> nn.Module:
    import timm

    kwargs = {"num_classes": num_classes, "in_chans": in_channels, **model_args}
    try:
        try:  # transformers need the input size; convnets refuse the argument
            return timm.create_model(arch, pretrained=pretrained, **{"img_size": image_size, **kwargs})
        except TypeError as exc:
            if "img_size" not in str(exc) or "img_size" in model_args:
                raise
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 (huggingface_hub's and torch.hub's errors vary by version)
        if not pretrained or isinstance(exc, TypeError):
            raise
        # huggingface_hub's LocalEntryNotFoundError / connection errors, torch.hub's URLError (OSError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataUnavailableError(f"timm pretrained weights for {arch!r} are not in timm's cache and could not be "
                                   f"downloaded ({type(exc).__name__}: {reason[:160]}); run once with network "
                                   f"access, or set pretrained: false / checkpoint: FILE") from None


@MODELS.register("timm", description="any timm architecture (arch, model_args, checkpoint, normalize, pretrained); "
                 "downloads only with pretrained: true", source="timm",
                 options={"arch": "a timm architecture name, e.g. resnet18",
                          "model_args": "keyword arguments of timm.create_model",
                          "checkpoint": "a local state dict to start from (read with weights_only=True)",
                          "checkpoint_sha256": "set by rkbench when the suite is checked: the checkpoint's sha256 "
                                               "(part of the run id)",
                          "normalize": "standardize pixels with the architecture's pretrained mean/std inside "
                                       "the model",
                          "pretrained": "start from timm's pretrained weights (downloaded by timm; offline and not "
                                        "in timm's cache: one line, exit 2)"})
def timm_model(num_classes: int, in_channels: int, image_size: int, arch: str = "resnet18",
               model_args: dict | None = None, checkpoint: str | None = None, checkpoint_sha256: str | None = None,
               normalize: bool = False, pretrained: bool = False) -> TimmClassifier:
    # the options (arch, checkpoint file and its hash) were checked by build_model's check_model_options
    model = create(arch, num_classes, in_channels, image_size, dict(model_args or {}), pretrained=pretrained)
    mean = std = None
    if normalize:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
        if len(mean) != in_channels:  # e.g. grey images: one channel, the average statistics
            mean, std = [sum(mean) / len(mean)] * in_channels, [sum(std) / len(std)] * in_channels
    wrapped = TimmClassifier(model, mean, std)
    if checkpoint:
        load_weights(wrapped, Path(checkpoint).expanduser(), arch)
    return wrapped


timm_model.check_options = check_options  # models.base.check_model_options calls it
timm_model.init_options = ("checkpoint", "checkpoint_sha256")  # the starting weights: not needed to rebuild it


def load_weights(wrapped: TimmClassifier, path: Path, arch: str) -> None:
    state = load_state_dict(path)
    if state and all(key.startswith("model.") or key in ("mean", "std") for key in state):
        target, state = wrapped, state  # saved from an rkbench timm model
    else:
        target = wrapped.model  # timm's own keys
    fit_weights(target, state, path, f"timm model {arch!r}")
