import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.errors import ConfigError
from rkbench.methods import METHODS
from rkbench.suite import apply_overrides, expand, load_suite, suite_from_dict

from conftest import builtin_names, tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, expected", [
    ("threat.eps=0", "threat.eps: eps must be > 0"),
    ("threat.eps=-0.1", "threat.eps: eps must be > 0"),
    ("methods.ardd={}", "methods.ardd: unknown method 'ardd'; did you mean 'ard'?"),
    ("students.0=resnet19", "students.0.model: unknown model 'resnet19'; did you mean 'resnet18'?"),
    ("training.epochz=3", "training.epochz: unknown field; did you mean 'epochs'?"),
    ("methods.kd.tt=3", "methods.kd.tt: unknown field; did you mean 't'?"),
    ("teachers.0.model=cnn_smal", "teachers.0.model: unknown model 'cnn_smal'; did you mean 'cnn_small'?"),
    ("evaluation.attacks=[pgd21]", "evaluation.attacks.0.name: unknown attack 'pgd21'; did you mean 'pgd20'?"),
    ("dataset.name=cifar11", "dataset.name: unknown dataset 'cifar11'; did you mean 'cifar10'?"),
    ("teachers.0.source=robustbenc", "teachers.0.source: unknown teacher source 'robustbenc'"),
    ("training.optimizer.lr=-1", "training.optimizer.lr: Input should be greater than 0"),
    ("colour=red", "colour: unknown field"),
    ("teachers.0.method=kd", "teachers.0.method: 'kd' needs a teacher itself"),
])
def test_invalid_suites_name_the_field(override, expected):
    raw = apply_overrides(tiny_suite_dict(), [override])
    with pytest.raises(ConfigError) as info:
        suite_from_dict(raw, source="tiny.yaml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_teacher_methods_need_a_teacher():
    with pytest.raises(ConfigError, match="methods kd, ard distill from a teacher"):
        suite_from_dict(tiny_suite_dict(teachers=[]))


def test_eps_accepts_fractions():
    suite = suite_from_dict(apply_overrides(tiny_suite_dict(), ["threat.eps=8/255"]))
    assert suite.threat.eps == pytest.approx(8 / 255)
    assert suite.threat.norm == "linf"


def test_overrides_reach_lists_and_method_params():
    raw = apply_overrides(tiny_suite_dict(), ["students.1.hidden=16", "methods.kd.t=2", "training.seeds=[0, 1]"])
    suite = suite_from_dict(raw)
    assert suite.students[1].options == {"hidden": 16}
    assert next(m for m in suite.methods if m.label == "kd").params["t"] == 2
    _, runs = expand(suite)
    # teacher-free methods run once per student and seed; teacher methods once per teacher too
    assert len(runs) == 4 * 2 * 2


def test_run_identity_ignores_evaluation_but_not_training():
    base = suite_from_dict(tiny_suite_dict())
    more_attacks = suite_from_dict(apply_overrides(tiny_suite_dict(), ["evaluation.n_examples=50"]))
    other_lr = suite_from_dict(apply_overrides(tiny_suite_dict(), ["training.optimizer.lr=0.01"]))
    ids = lambda s: [r.run_id for r in expand(s)[1]]  # noqa: E731
    assert ids(base) == ids(more_attacks)
    assert set(ids(base)).isdisjoint(ids(other_lr))
    assert ids(base) == ids(suite_from_dict(copy.deepcopy(tiny_suite_dict())))  # stable


def test_embedded_suite_validates():
    suite = load_suite(ROOT / "suites" / "digits.yaml")
    _, runs = expand(suite)
    one_teacher = {name for name in builtin_names(METHODS) if not METHODS.get(name).teacher_roles}
    assert {r.method.method for r in runs} == one_teacher  # every built-in one-teacher method, from the registry
    assert len({r.student.name for r in runs}) >= 2
    # the methods that distill a teacher group run in the digits-mtard variant
    _, group_runs = expand(load_suite(ROOT / "suites" / "digits-mtard.yaml"))
    assert {r.method.method for r in group_runs} >= set(builtin_names(METHODS)) - one_teacher


def test_cli_validate_broken_suite_exits_2_with_one_line(tmp_path):
    raw = tiny_suite_dict()
    raw["threat"]["eps"] = 0
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {path}: threat.eps: eps must be > 0, got 0.0 (see docs/suites.md#threat)"]


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed", "is not valid YAML"),
    ("- a list", "a suite is a YAML mapping"),
])
def test_cli_rejects_malformed_files(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and expected in result.output


def test_cli_missing_suite_file_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "suite file not found" in result.output


def test_the_docs_suite_example_validates():
    """The annotated suite in docs/suites.md uses only fields that exist (a renamed option fails here)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "suites.md").read_text()
    section = page.split("## A suite file", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    suite = suite_from_dict(yaml.safe_load(block))
    assert suite.training.channels_last is False and suite.training.amp == "off"
    assert suite.training.deterministic is None
