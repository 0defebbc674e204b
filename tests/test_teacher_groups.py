"""Runs with several teachers (a teacher ``group``), and the single-teacher run ids they must not move."""
import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.errors import ConfigError
from rkbench.suite import apply_overrides, expand, load_suite, suite_from_dict

from conftest import tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)

# suites/digits.yaml's ids computed on main (18c0153) before teacher groups existed: a change to
# the run identity of single-teacher runs would orphan every finished run directory
DIGITS_TEACHER_ID = "788c8a50797d"
DIGITS_RUN_IDS = {
    "cnn_tiny/natural": "526289a552c6", "mlp/natural": "bb45bcfa5670", "cnn_tiny/kd": "e1058592e502",
    "mlp/kd": "cb025b9c402a", "cnn_tiny/at": "6e9bd8b2c491", "mlp/at": "5f0576e9573c",
    "cnn_tiny/ard": "24bd56322802", "mlp/ard": "69e2102ff77b", "cnn_tiny/fast_ard": "90d566211f41",
    "mlp/fast_ard": "6b1a9ce755f0", "cnn_tiny/kdiga": "15ef8b5dfb6c", "mlp/kdiga": "ef87c3317dbd",
    "cnn_tiny/rrm": "6c25db630c93", "mlp/rrm": "6d57fc38229e", "cnn_tiny/trades": "e8b1b8eda88c",
    "mlp/trades": "542661f25aa8", "cnn_tiny/free_at": "a89e6ddb7590", "mlp/free_at": "179b6c4e7b17",
    "cnn_tiny/fgsm_rs": "307271f7a706", "mlp/fgsm_rs": "45bda66289bb", "cnn_tiny/rslad": "0dc3c0501ae4",
    "mlp/rslad": "70707a13583d", "cnn_tiny/iad": "3bf7c9ccd2d8", "mlp/iad": "21bec25e3006",
    "cnn_tiny/adaad": "bb1a6903c88b", "mlp/adaad": "2b0a17a42ef4",
}


def test_single_teacher_run_ids_of_the_digits_suite_are_unchanged():
    teachers, runs = expand(load_suite(ROOT / "suites" / "digits.yaml"))
    assert [plan.teacher_id for plan in teachers] == [DIGITS_TEACHER_ID]
    assert {f"{run.student.name}/{run.method.label}": run.run_id for run in runs} == DIGITS_RUN_IDS


# ---------------------------------------------------------------------------------------------
# a suite with a teacher group

def group_suite(**changes) -> dict:
    raw = tiny_suite_dict(
        teachers=[{"name": "t_at", "source": "train", "model": "cnn_tiny", "method": "at", "training": {"epochs": 1}},
                  {"name": "t_nat", "source": "train", "model": "cnn_tiny", "method": "natural", "methods": [],
                   "training": {"epochs": 1}},
                  {"name": "both", "group": {"clean": "t_nat", "robust": "t_at"}}],
        students=["cnn_tiny"],
        methods={"ard": {"t": 4, "attack_steps": 2}, "mtard": {"attack_steps": 2}})
    raw.update(changes)
    return raw


def test_a_group_run_names_every_teacher_in_its_identity():
    teachers, runs = expand(suite_from_dict(group_suite()))
    assert [plan.spec.name for plan in teachers] == ["t_at", "t_nat"]  # the group is no teacher of its own
    by_method = {run.method.label: run for run in runs}
    assert by_method["ard"].teacher.spec.name == "t_at"  # t_nat (methods: []) serves only in the group
    mtard = by_method["mtard"]
    plans = {plan.spec.name: plan for plan in teachers}
    assert mtard.identity()["teacher"] == {"group": {"clean": plans["t_nat"].identity,
                                                     "robust": plans["t_at"].identity}}
    assert mtard.describe()["teacher"] == "clean=t_nat,robust=t_at"
    swapped = group_suite()
    swapped["teachers"][2]["group"] = {"clean": "t_at", "robust": "t_nat"}
    retrained = group_suite()
    retrained["teachers"][1]["training"] = {"epochs": 2}
    others = [{r.method.label: r.run_id for r in expand(suite_from_dict(raw))[1]} for raw in (swapped, retrained)]
    assert all(o["mtard"] != mtard.run_id and o["ard"] == by_method["ard"].run_id for o in others)


@pytest.mark.parametrize("change, expected", [
    (["teachers.2.group.clean=t_nta"], "teachers.2.group.clean: no teacher named 't_nta' (a group names single "
                                       "teachers); did you mean 't_nat'?"),
    (["teachers.2.group.clean=both"], "teachers.2.group.clean: no teacher named 'both'"),
    (["teachers.2.source=train"], "teachers.2: Value error, teacher 'both': give a source"),
    (["teachers.2.model=mlp"], "teachers.2: Value error, group 'both': takes no options (model)"),
    (["teachers.2.methods=[ard]"], "teachers.2.methods: 'ard' distills from one teacher, not a group"),
    (["teachers.0.methods=[mtard]"], "teachers.0.methods: 'mtard' distills from a group with roles clean, robust"),
    (["teachers.2.group={clean: t_nat}"], "methods.mtard: distills from teachers clean, robust; add a teacher group"),
    (["teachers.2.methods=[]"], "methods.mtard: distills from teachers clean, robust; add a teacher group for it, "
                                "e.g. {name: both, group: {clean: NAME, robust: NAME}}"),
])
def test_bad_groups_give_one_line_naming_the_field(change, expected):
    with pytest.raises(ConfigError) as info:
        suite_from_dict(apply_overrides(group_suite(), change), "g.yaml")
    message = str(info.value)
    assert "\n" not in message and expected.replace("Value error, ", "") in message


def test_validate_a_bad_group_exits_2_with_one_line(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(group_suite(), ["teachers.2.group.robust=t_ta"])))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: teachers.2.group.robust: no teacher named 't_ta' (a group names single teachers); "
        f"did you mean 't_at'?"]


def test_a_group_run_trains_and_the_leaderboard_names_every_teacher(tmp_path):
    from rkbench.runner import run_suite

    outcome = run_suite(suite_from_dict(group_suite()), tmp_path)
    assert [o.status for o in outcome.outcomes] == ["finished", "finished"]
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["teacher"]) == {"t_at", "clean=t_nat,robust=t_at"}
    assert sorted(p.name for p in (tmp_path / "teachers").iterdir()) == sorted(
        plan.teacher_id for plan in expand(suite_from_dict(group_suite()))[0])  # members trained once each


def test_group_teachers_run_once_per_batch_in_lock_step_and_equal_separate_runs(digits):
    """Two MTARD students in lock-step: the clean teacher runs once per batch for both (the robust
    one on each student's x_adv), and each student ends as it would alone."""
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer, TrainJob

    threat = ThreatModel(eps=0.1, step_size=0.025, steps=2)
    torch.manual_seed(0)
    teachers = {role: build_model("mlp", 10, digits.input_shape, hidden=16).eval() for role in ("clean", "robust")}
    calls = {role: 0 for role in teachers}
    for role, model in teachers.items():
        model.register_forward_hook(lambda m, i, o, role=role: calls.__setitem__(role, calls[role] + 1))
    config = TrainingConfig(epochs=1, batch_size=256, optimizer={"lr": 0.05}, device="cpu")

    def job(beta):
        torch.manual_seed(1)
        return TrainJob(build_model("mlp", 10, digits.input_shape, hidden=16),
                        build_method("mtard", {"beta": beta, "weight_lr": 0.5}, threat, seed=0), seed=0)

    together = [job(1.0), job(2.0)]
    Trainer(config, torch.device("cpu")).fit_many(together, digits, teacher=teachers)
    batches = -(-digits.x_train.shape[0] // 256)
    assert calls == {"clean": batches, "robust": 2 * batches}
    alone = job(2.0)
    Trainer(config, torch.device("cpu")).fit_many([alone], digits, teacher=copy.deepcopy(teachers))
    assert all(torch.equal(a, b) for a, b in zip(alone.student.state_dict().values(),
                                                 together[1].student.state_dict().values()))
    assert alone.method.clean_weight == together[1].method.clean_weight != together[0].method.clean_weight
