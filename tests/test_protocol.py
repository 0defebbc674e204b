"""The training-attack protocol: one switch for the student's BatchNorm mode while training examples
are crafted, for every registered method (and teachers trained in the suite)."""
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from rkbench.errors import ConfigError
from rkbench.methods import METHODS, Batch, build_method
from rkbench.methods.base import FREE
from rkbench.models import build_model
from rkbench.suite import apply_overrides, expand, suite_from_dict
from rkbench.threat import ThreatModel

from conftest import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
THREAT = ThreatModel(eps=0.1, step_size=0.03, steps=3)


def one_loss(name: str, protocol: str) -> dict:
    """One loss of ``name`` on a BatchNorm student in train mode (as the trainer calls it) under the
    protocol's attack mode: how many student forwards ran, how many of them in eval mode (the trainer
    keeps the student in train mode, so those are the crafting passes), how often BatchNorm updated
    its running statistics, and the statistics after."""
    torch.manual_seed(0)
    student = build_model("cnn_tiny", 10, (1, 8, 8))
    teacher = build_model("cnn_tiny", 10, (1, 8, 8)).eval().requires_grad_(False)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        roles = METHODS.get(name).teacher_roles  # a multi-teacher method: the one teacher in every role
        batch = Batch(x, y, teacher_logits=teacher(x), teacher_features=teacher.features(x), teacher=teacher,
                      teachers={role: teacher for role in roles} or None,
                      teachers_logits={role: teacher(x) for role in roles} or None, epoch=0, epochs=4)
    method = build_method(name, {}, THREAT, seed=0, attack_mode=protocol)
    method.prepare(student, teacher)
    norm = next(m for m in student.modules() if isinstance(m, nn.BatchNorm2d))
    calls = []
    handle = norm.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    before = int(norm.num_batches_tracked)
    student.train()
    method.loss(student, batch)
    handle.remove()
    return {"mode": method.attack_mode, "forwards": len(calls), "crafting": calls.count(False),
            "updates": int(norm.num_batches_tracked) - before, "running_mean": norm.running_mean.clone()}


@pytest.mark.parametrize("name", METHODS.names())
def test_the_protocol_sets_batchnorm_while_crafting_for_every_method(name):
    declared = METHODS.get(name).official_attack_mode
    assert declared in ("train", "eval", FREE, None)
    under_eval, under_train = one_loss(name, "eval"), one_loss(name, "train")
    assert under_eval["forwards"] == under_train["forwards"]  # the same passes, only the mode differs
    if declared in ("train", "eval"):  # crafts examples on the student: the protocol decides
        assert (under_eval["mode"], under_train["mode"]) == ("eval", "train")
        assert under_eval["crafting"] >= 1
        # eval: running statistics untouched while crafting, only the loss's own passes update them
        assert under_eval["updates"] == under_eval["forwards"] - under_eval["crafting"]
        # train: every crafting pass moves them too
        assert under_train["crafting"] == 0 and under_train["updates"] == under_train["forwards"]
        assert not torch.equal(under_eval["running_mean"], under_train["running_mean"])
    else:  # the free family (exempt: crafting is the training pass) or no crafting at all
        assert under_eval["mode"] == under_train["mode"] == declared
        assert under_eval["crafting"] == under_train["crafting"] == 0
        assert under_eval["updates"] == under_train["updates"]
        assert torch.equal(under_eval["running_mean"], under_train["running_mean"])


@pytest.mark.parametrize("name", METHODS.names())
def test_official_picks_each_methods_declared_mode(name):
    cls = METHODS.get(name)
    assert build_method(name, {}, THREAT, attack_mode="official").attack_mode == cls.official_attack_mode
    if cls.official_attack_mode is not None:  # a declared mode names the official file and line
        assert re.search(r"\.py:\d+|Algorithm", cls.official_attack_mode_source), cls.official_attack_mode_source


def test_the_docs_table_lists_every_declared_mode():
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text.split("### The training-attack protocol")[1].split("\n### ")[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (\w[\w ()/]*?) \|", section, re.M)}
    shown = {FREE: "n/a (free)", None: "none"}
    for name in METHODS.names():
        mode = METHODS.get(name).official_attack_mode
        assert rows.get(name) == shown.get(mode, mode), name


def runs_by_label(**protocol):
    suite = suite_from_dict(tiny_suite_dict(**({"protocol": protocol} if protocol else {})))
    teachers, runs = expand(suite)
    return teachers, {(r.method.label, r.student.name): r for r in runs}


def test_the_protocol_is_part_of_every_run_id_and_of_trained_teachers():
    eval_teachers, under_eval = runs_by_label(attack_mode="eval")
    train_teachers, under_train = runs_by_label(attack_mode="train")
    _, default = runs_by_label()
    assert {k: r.run_id for k, r in default.items()} == {k: r.run_id for k, r in under_eval.items()}  # default: eval
    assert {r.run_id for r in under_eval.values()}.isdisjoint(r.run_id for r in under_train.values())
    assert eval_teachers[0].teacher_id != train_teachers[0].teacher_id
    assert (eval_teachers[0].attack_mode, train_teachers[0].attack_mode) == ("eval", "train")
    ard = under_train[("ard", "cnn_tiny")]
    assert ard.identity()["protocol"] == {"attack_mode": "train"}
    assert ard.describe()["protocol"] == "train" and ard.describe()["attack_mode"] == "train"
    assert under_train[("natural", "cnn_tiny")].describe()["attack_mode"] is None


def test_official_protocol_gives_each_run_its_methods_mode():
    raw = tiny_suite_dict(protocol={"attack_mode": "official"})
    raw["methods"] = {**raw["methods"], "rslad": {}, "free_at": {"m": 2}}
    _, runs = expand(suite_from_dict(raw))
    modes = {r.method.label: r.attack_mode for r in runs}
    assert modes == {"natural": None, "kd": None, "at": "train", "ard": "train", "rslad": "eval", "free_at": FREE}


@pytest.mark.parametrize("override, expected", [
    ("methods.ard.attack_mode=eval", "methods.ard.attack_mode: a method has no attack mode of its own; set the "
                                     "suite's `protocol: {attack_mode: official | eval | train}`"),
    ("teachers.0.method_params={attack_mode: eval}", "teachers.0.method_params.attack_mode: a method has no attack"),
    ("protocol.attack_mode=evaluation", "protocol.attack_mode: Input should be 'official', 'eval' or 'train'"),
    ("protocol.mode=eval", "protocol.mode: unknown field; did you mean 'attack_mode'?"),
])
def test_bad_protocol_settings_name_the_field(override, expected):
    with pytest.raises(ConfigError) as info:
        suite_from_dict(apply_overrides(tiny_suite_dict(), [override]), source="tiny.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("suite, mode", [("digits", "eval"), ("cifar10-slice", "eval"), ("cifar10", "official"),
                                         ("cifar100", "official")])
def test_each_embedded_suite_declares_its_protocol(suite, mode):
    from rkbench.suite import load_suite

    assert load_suite(ROOT / "suites" / f"{suite}.yaml").protocol.attack_mode == mode
