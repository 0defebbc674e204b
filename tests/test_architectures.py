"""Students of every family: suites/cifar10-architectures.yaml (offline validation, each student
builds at 32x32), its digits-scale counterpart, and timm's ``pretrained: true`` offline."""
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.models import build_model
from rkbench.suite import expand, load_suite

from conftest import tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def family(student) -> str:
    return student.options["arch"].split("_")[0] if student.model == "timm" else student.model


def test_cifar10_architectures_validates_offline_with_five_families(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["validate", str(ROOT / "suites" / "cifar10-architectures.yaml")])
    assert result.exit_code == 0, result.output
    suite = load_suite(ROOT / "suites" / "cifar10-architectures.yaml")
    assert {family(s) for s in suite.students} == {"resnet18", "mobilenetv2", "wideresnet", "vit", "convnext"}
    assert [m.label for m in suite.methods] == ["kd", "ard", "rslad", "kdiga"]
    assert [t.source for t in suite.teachers] == ["robustbench"]
    assert {a.name for a in suite.evaluation.attacks} >= {"pgd20", "transfer-teacher"}
    assert suite.evaluation.corruptions.files == "cifar10"
    _, runs = expand(suite)
    assert len(runs) == 5 * 4


@pytest.mark.parametrize("name", ["vit_tiny_p4", "convnext_atto", "wrn16_4"])
def test_the_new_families_build_and_classify_32x32_images(name):
    suite = load_suite(ROOT / "suites" / "cifar10-architectures.yaml")
    student = next(s for s in suite.students if s.name == name)
    model = build_model(student.model, 10, (3, 32, 32), **student.options).eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and features.shape[0] == 2 and torch.isfinite(logits).all()


def test_digits_counterpart_has_three_families_and_three_seeds():
    suite = load_suite(ROOT / "suites" / "digits-architectures.yaml")
    assert {family(s) for s in suite.students} == {"cnn_tiny", "mlp", "vit"} and suite.training.seeds == [0, 1, 2]
    vit = next(s for s in suite.students if s.model == "timm")
    model = build_model(vit.model, 10, (1, 8, 8), **vit.options).eval()
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    # the same teacher as suites/digits.yaml: its directory (and transfer examples) can be shared
    assert expand(suite)[0][0].teacher_id == expand(load_suite(ROOT / "suites" / "digits.yaml"))[0][0].teacher_id


def test_timm_pretrained_offline_and_not_cached_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    raw = tiny_suite_dict(students=[{"name": "vit", "model": "timm", "arch": "vit_tiny_patch16_224",
                                     "model_args": {"patch_size": 2}, "pretrained": True}])
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in (["validate", str(path)], ["run", str(path), "--results-dir", str(tmp_path / "results")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
        assert "students.0: pretrained: timm pretrained weights for 'vit_tiny_patch16_224' are not in timm's cache" \
            in lines[0]
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("model.safetensors"))
