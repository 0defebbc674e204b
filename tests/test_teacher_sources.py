"""Teacher sources beyond the spine: RobustBench (offline, placed checkpoint), pyautoattack's
example ResNet-18, timm architectures; and the compat layer that makes PyPI robustbench import."""
import socket
import sys

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from rkbench import compat
from rkbench.cli import main
from rkbench.data import TensorDataset
from rkbench.errors import ConfigError, DataUnavailableError, RkbenchError
from rkbench.models import build_model
from rkbench.teachers import TEACHER_SOURCES, TeacherContext
from rkbench.threat import ThreatModel

from conftest import SHARED_CIFAR

ZOO_MODEL = "Sehwag2021Proxy_R18"  # a plain ResNet-18 in RobustBench's CIFAR-10 Linf zoo: builds in 0.1 s


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly (and RobustBench's downloader is disarmed)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    compat.import_robustbench()
    import robustbench.utils

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", refuse)
    monkeypatch.setattr(robustbench.utils, "download_gdrive", refuse)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """A RobustBench model directory holding ZOO_MODEL with random weights, saved the way
    RobustBench's files are (wrapped in state_dict, DataParallel 'module.' prefixes)."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel as RBThreat

    compat.import_robustbench()
    torch.manual_seed(0)
    reference = model_dicts[BenchmarkDataset.cifar_10][RBThreat.Linf][ZOO_MODEL]["model"]()
    root = tmp_path_factory.mktemp("robustbench")
    (root / "cifar10" / "Linf").mkdir(parents=True)
    state = {f"module.{key}": value for key, value in reference.state_dict().items()}
    torch.save({"state_dict": state}, root / "cifar10" / "Linf" / f"{ZOO_MODEL}.pt")
    return root, reference.eval()


def cifar_like(n: int = 4) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return TensorDataset("cifar_like", x, y, x, y, num_classes=10)


def build_teacher(source_name: str, data: TensorDataset, **options):
    source = TEACHER_SOURCES.get(source_name)()
    return source.build(source.Params(**options), TeacherContext(data, ThreatModel(), torch.device("cpu")))


# ---------------------------------------------------------------------------------------------
# compat


def test_robustbench_imports_with_pyautoattack_aliased_as_autoattack():
    compat.import_robustbench()
    import pyautoattack
    import pyautoattack.state

    assert sys.modules["autoattack"] is pyautoattack
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState

    assert AutoAttack is pyautoattack.AutoAttack and EvaluationState is pyautoattack.state.EvaluationState
    import robustbench.eval  # the module that imports autoattack

    assert robustbench.eval.AutoAttack is pyautoattack.AutoAttack


def test_a_real_autoattack_is_not_shadowed(monkeypatch):
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.setattr(compat, "_importable", lambda name: True)  # as if `autoattack` were installed
    assert compat.alias_autoattack() is False
    assert "autoattack" not in sys.modules


def test_missing_pkg_resources_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # `import pkg_resources` now fails
    with pytest.raises(RkbenchError, match=r"pip install 'setuptools<81'") as info:
        compat.require_pkg_resources()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# robustbench


def test_robustbench_teacher_loads_a_placed_checkpoint_offline(zoo_dir, no_network):
    root, reference = zoo_dir
    data = cifar_like()
    teacher = build_teacher("robustbench", data, name=ZOO_MODEL, dataset="cifar10", threat="Linf", model_dir=root)
    x = data.x_test
    with torch.no_grad():
        expected = reference(x)
        logits, features = teacher.forward_with_features(x)
        assert torch.allclose(teacher(x), expected, atol=1e-5)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert features.shape == (len(x), 512) and teacher.features(x).shape == (len(x), 512)
    assert torch.allclose(teacher.head(features), logits, atol=1e-5)  # the hook took the head's input


def test_robustbench_identity_holds_the_file_hash(zoo_dir):
    from rkbench.weights import file_sha256

    root, _ = zoo_dir
    source = TEACHER_SOURCES.get("robustbench")()
    identity = source.identity(source.Params(name=ZOO_MODEL, model_dir=root))
    assert identity["sha256"] == file_sha256(root / "cifar10" / "Linf" / f"{ZOO_MODEL}.pt")
    assert "model_dir" not in identity  # where the file sits does not change the teacher


def test_robustbench_missing_file_is_one_line_naming_the_path(tmp_path, no_network):
    with pytest.raises(DataUnavailableError) as info:
        build_teacher("robustbench", cifar_like(), name="Carmon2019Unlabeled", model_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in message
    assert "\n" not in message and "copy the file there" in message


def test_robustbench_html_page_saved_as_pt_is_caught(tmp_path, no_network):
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "cifar10" / "Linf" / f"{ZOO_MODEL}.pt").write_text("<!DOCTYPE html><html>Too many users</html>")
    with pytest.raises(DataUnavailableError, match="is an HTML/XML page, not a torch checkpoint"):
        build_teacher("robustbench", cifar_like(), name=ZOO_MODEL, model_dir=tmp_path)


def test_robustbench_unknown_name_gets_did_you_mean():
    source = TEACHER_SOURCES.get("robustbench")()
    with pytest.raises(ValueError, match="did you mean 'Carmon2019Unlabeled'"):
        source.Params(name="Carmon2019Unlabled")


def test_a_suite_with_a_robustbench_teacher_runs_offline(zoo_dir, no_network, tmp_path):
    """Done when: a suite naming a RobustBench teacher runs here offline against a placed checkpoint."""
    root, _ = zoo_dir
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny_cifar.npz", x_train=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
             y_train=rng.integers(0, 10, 16), x_test=rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
             y_test=rng.integers(0, 10, 4))
    suite = {"name": "zoo", "dataset": {"name": "npz", "path": str(tmp_path / "tiny_cifar.npz"), "num_classes": 10,
                                        "augment": "none"},
             "threat": {"norm": "linf", "eps": "8/255", "step_size": "2/255", "steps": 1},
             "teachers": [{"name": ZOO_MODEL, "source": "robustbench", "dataset": "cifar10", "threat": "Linf",
                           "model_dir": str(root)}],
             "students": ["cnn_tiny"], "methods": {"kd": {"t": 4}},
             "training": {"epochs": 1, "batch_size": 16, "threads": 2},
             "evaluation": {"attacks": [{"name": "pgd", "label": "pgd1", "steps": 1}]}}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert ZOO_MODEL in (tmp_path / "r" / "leaderboard.md").read_text()

    suite["teachers"][0]["model_dir"] = str(tmp_path / "empty")  # offline, nothing placed: one line, exit 2
    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(tmp_path / "r2"), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"{ZOO_MODEL}.pt" in result.stderr


def test_list_teachers_shows_the_zoo_with_published_accuracy():
    result = CliRunner().invoke(main, ["list", "teachers"], terminal_width=250)
    assert result.exit_code == 0
    for expected in ("robustbench", "pyautoattack", "timm", "Carmon2019Unlabeled", "WideResNet-28-10", "59.53",
                     "cifar100", "L2"):
        assert expected in result.output, expected


# ---------------------------------------------------------------------------------------------
# pyautoattack


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="the shared CIFAR-10 slice is not here")
def test_pyautoattack_teacher_is_a_real_cifar10_model(no_network):
    from rkbench.data import load_dataset

    data = load_dataset("npz", {"path": str(SHARED_CIFAR)})
    teacher = build_teacher("pyautoattack", data).eval()
    with torch.no_grad():
        logits, features = teacher.forward_with_features(data.x_test[:200])
    accuracy = (logits.argmax(1) == data.y_test[:200]).float().mean().item()
    assert accuracy > 0.85  # about 93.6 % on the whole slice
    assert features.shape == (200, 512)


def test_pyautoattack_teacher_rejects_other_datasets(digits):
    with pytest.raises(ConfigError, match="CIFAR-10 model"):
        build_teacher("pyautoattack", digits)


# ---------------------------------------------------------------------------------------------
# timm


@pytest.mark.parametrize("arch, args", [("test_byobnet", {}), ("test_vit", {"patch_size": 4})])
def test_timm_student_has_features_and_matches_timm(arch, args):
    model = build_model("timm", 10, (1, 8, 8), arch=arch, model_args=args).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        logits, features = model.forward_with_features(x)
        assert torch.allclose(model(x), model.model(x), atol=1e-5)  # timm's own forward
    assert torch.allclose(logits, model(x), atol=1e-5) and features.shape == (3, model.feature_dim)


def test_timm_checkpoint_hash_joins_the_run_id(tmp_path):
    from rkbench.suite import expand, suite_from_dict

    from conftest import tiny_suite_dict

    model = build_model("timm", 10, (1, 8, 8), arch="test_byobnet")
    torch.save(model.state_dict(), tmp_path / "w.pt")

    def run_id():
        suite = suite_from_dict(tiny_suite_dict(
            students=[{"name": "b", "model": "timm", "arch": "test_byobnet", "checkpoint": str(tmp_path / "w.pt")}],
            methods={"natural": {}}, teachers=[]))
        return expand(suite)[1][0].run_id

    first = run_id()
    assert run_id() == first
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    assert run_id() != first

    loaded = build_model("timm", 10, (1, 8, 8), arch="test_byobnet", checkpoint=str(tmp_path / "w.pt"))
    assert torch.equal(next(iter(loaded.state_dict().values())), next(iter(model.state_dict().values())) + 1)


def test_timm_teacher_source_and_bad_arch(tmp_path, digits):
    model = build_model("timm", 10, (1, 8, 8), arch="test_byobnet").eval()
    torch.save(model.model.state_dict(), tmp_path / "timm_keys.pt")  # timm's own keys load too
    teacher = build_teacher("timm", digits, arch="test_byobnet", checkpoint=tmp_path / "timm_keys.pt").eval()
    with torch.no_grad():
        assert torch.allclose(teacher(digits.x_test[:4]), model(digits.x_test[:4]), atol=1e-5)
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_model("timm", 10, (1, 8, 8), arch="resnet18x")
