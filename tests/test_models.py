import pytest
import torch

from rkbench.errors import ConfigError
from rkbench.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name, options, shape", [
    ("cnn_small", {}, (1, 8, 8)), ("cnn_tiny", {}, (1, 8, 8)), ("mlp", {}, (1, 8, 8)),
    ("resnet18", {"base_width": 8}, (3, 32, 32)), ("preact_resnet18", {"base_width": 8}, (3, 32, 32)),
    ("mobilenetv2", {"width_mult": 0.25, "last_channels": 64}, (3, 32, 32)),
    ("wideresnet", {"depth": 10, "width": 1}, (3, 32, 32)),
])
def test_models_give_logits_and_penultimate_features(name, options, shape):
    model = build_model(name, 7, shape, **options).eval()
    x = torch.rand(2, *shape)
    logits, features = model.forward_with_features(x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.feature_dim)
    assert torch.allclose(model(x), logits) and torch.allclose(model.features(x), features)


def test_full_size_parameter_counts():
    assert 11_000_000 < count_parameters(build_model("resnet18", 10, (3, 32, 32))) < 11_300_000
    assert 2_200_000 < count_parameters(build_model("mobilenetv2", 10, (3, 32, 32))) < 2_300_000
    assert 46_000_000 < count_parameters(build_model("wideresnet", 10, (3, 32, 32), depth=34, width=10)) < 46_300_000


def test_unknown_model_option_is_rejected():
    with pytest.raises(ConfigError, match="takes no option 'hiden'"):
        build_model("mlp", 10, (1, 8, 8), hiden=3)
    assert "resnet18" in MODELS.names()
