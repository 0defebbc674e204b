"""Cost of a model, counted (never looked up): multiply-adds of one forward pass.

``count_madds`` runs the model once on a single zero input of the dataset's shape with forward
hooks on every ``Conv2d`` and ``Linear`` and adds up their multiply-accumulates:

- Conv2d: output elements x (in_channels / groups) x kernel height x kernel width
  (a depthwise 3x3 conv costs 9 per output element);
- Linear: output features x input features, per input row.

Like the usual counters (thop, ptflops, the MobileNet papers) it leaves out biases,
BatchNorm, activations, pooling and residual additions: they are a few percent at most.
The counter is checked against the published figure of the original network: torchvision's
ImageNet MobileNetV2 at 224x224 counts 300.8M, Sandler et al. (2018) report 300M multiply-adds.

rkbench's CIFAR MobileNetV2 (``mobilenetv2``, the ARD repository's variant, 2.30M parameters) at
32x32 counts 91.2M (89.0M without the four 1x1 shortcut convs, as ``mobilenetv2_relu6``), not the
~187M quoted in ARD (Goldblum et al. 2020, section 6) for the same architecture. 187M is about
twice 91M, close to (not exactly) counting a multiply and an add as two operations (FLOPs =
2 x MACs = 182M) plus BatchNorm and activations. rkbench reports multiply-accumulates and does not
fudge them towards the paper's number; see ``tests/test_report.py::test_mobilenetv2_madds``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def layer_madds(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_madds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of ``model`` for ONE input of shape ``input_shape`` (C, H, W)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += layer_madds(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


def try_count_madds(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """``count_madds``, or None for a model it cannot run on one zero input (the run goes on)."""
    try:
        return count_madds(model, input_shape)
    except Exception:  # a cost column is never worth failing a finished run over
        return None
