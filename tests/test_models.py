import pytest

from rkbench.errors import ConfigError
from rkbench.models import MODELS, build_model, count_parameters


def test_full_size_parameter_counts():
    assert 11_000_000 < count_parameters(build_model("resnet18", 10, (3, 32, 32))) < 11_300_000
    assert 2_200_000 < count_parameters(build_model("mobilenetv2", 10, (3, 32, 32))) < 2_300_000
    assert 46_000_000 < count_parameters(build_model("wideresnet", 10, (3, 32, 32), depth=34, width=10)) < 46_300_000


def test_unknown_model_option_is_rejected():
    with pytest.raises(ConfigError, match="takes no option 'hiden'"):
        build_model("mlp", 10, (1, 8, 8), hiden=3)
    assert "resnet18" in MODELS.names()
