import hashlib
import json

import pytest
import torch
from torch import nn

from rkbench.errors import ConfigError
from rkbench.models import MODELS, build_model, count_parameters


# The published definitions the papers trained, read layer by layer (ARD's models/mobilenetv2.py and
# models/resnet.py, copied unchanged by RSLAD, IAD and AdaAD; TRADES' models/wideresnet.py) and
# instantiated once outside this repository. Per model and class count: the parameter count and a
# digest of the sorted (state-dict key, shape) pairs, the official keys written in rkbench's names
# (linear/fc -> head; resnet layer{s}.{j} -> layers.{2(s-1)+j}; wrn block{s}.layer.{j} ->
# blocks.{5(s-1)+j}, convShortcut -> shortcut, bn1 -> bn; TRADES' unused sub_block1 left out).
PUBLISHED = [
    ("mobilenetv2", {}, 10, 2_296_922, "3205a81c221963b1"),
    ("mobilenetv2", {}, 100, 2_412_212, "92baced147f6e91b"),
    ("resnet18", {}, 10, 11_173_962, "0a12ec54b4064aba"),
    ("resnet18", {}, 100, 11_220_132, "453fc39ba00c1b2f"),
    ("wideresnet", {"depth": 34, "width": 10}, 10, 46_160_474, "8672969f9a374072"),
    ("wideresnet", {"depth": 34, "width": 10}, 100, 46_218_164, "b427495710714a09"),
]


def state_digest(model) -> str:
    items = sorted((key, list(value.shape)) for key, value in model.state_dict().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, options, classes, parameters, digest", PUBLISHED)
def test_paper_architectures_match_the_published_definitions(name, options, classes, parameters, digest):
    model = build_model(name, classes, (3, 32, 32), **options)
    assert count_parameters(model) == parameters
    assert state_digest(model) == digest


def test_mobilenetv2_is_the_ard_cifar_variant():
    """ReLU (never ReLU6); a 1x1 conv + BN shortcut exactly in the stride-1 blocks whose width
    changes; identity shortcuts in the other stride-1 blocks; none in stride-2 blocks."""
    model = build_model("mobilenetv2", 10, (3, 32, 32))
    activations = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))}
    assert activations == {nn.ReLU}
    # (in, out, stride) of the 17 blocks, and which have a projection shortcut
    blocks = [(b.conv1.in_channels, b.conv3.out_channels, b.conv2.stride[0]) for b in model.layers]
    assert blocks == [(32, 16, 1), (16, 24, 1), (24, 24, 1), (24, 32, 2), (32, 32, 1), (32, 32, 1), (32, 64, 2),
                      (64, 64, 1), (64, 64, 1), (64, 64, 1), (64, 96, 1), (96, 96, 1), (96, 96, 1), (96, 160, 2),
                      (160, 160, 1), (160, 160, 1), (160, 320, 1)]
    projected = [i for i, b in enumerate(model.layers) if len(b.shortcut) == 2]
    assert projected == [0, 1, 10, 16]
    assert [i for i, b in enumerate(model.layers) if not b.residual] == [3, 6, 13]
    # the residual is really added: zeroing the projection's BN output leaves only the shortcut
    block = model.layers[10].eval()
    with torch.no_grad():
        block.bn3.weight.zero_()
        block.bn3.bias.zero_()
        x = torch.rand(1, 64, 8, 8)
        assert torch.allclose(block(x), block.shortcut(x))


def test_the_relu6_variant_is_kept_under_its_own_name():
    model = build_model("mobilenetv2_relu6", 10, (3, 32, 32))
    assert count_parameters(model) == 2_237_770
    assert {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))} == {nn.ReLU6}
    assert not any(len(b.shortcut) for b in model.layers)


def test_wideresnet_uses_the_trades_initialization():
    torch.manual_seed(0)
    model = build_model("wideresnet", 10, (3, 32, 32), depth=16, width=4)
    conv = model.blocks[0].conv1  # 3x3, 64 output channels: std sqrt(2 / (9 * 64))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d))
    assert torch.all(model.head.bias == 0)


def test_unknown_model_option_is_rejected():
    with pytest.raises(ConfigError, match="takes no option 'hiden'"):
        build_model("mlp", 10, (1, 8, 8), hiden=3)
    assert "resnet18" in MODELS.names()
