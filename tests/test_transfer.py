"""Transfer attacks (rkbench/attacks/transfer.py): crafted on a source model once, cached in its
directory, a declared column of the evaluation; the ``!teacher_transfer`` flag of reports."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rkbench import store
from rkbench.api import run_suite
from rkbench.attacks import build_attack
from rkbench.attacks.transfer import Transfer
from rkbench.cli import main
from rkbench.errors import AttackError, ConfigError
from rkbench.evaluator import load_per_example
from rkbench.record import RunRecord, read_record, write_record
from rkbench.report import collect, leaderboard, render
from rkbench.suite import expand, suite_from_dict
from rkbench.threat import ThreatModel

from conftest import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)

ATTACKS = [{"name": "pgd", "label": "pgd5", "steps": 5}, {"name": "transfer-teacher", "steps": 5, "exact": True}]


def transfer_suite(**changes) -> dict:
    raw = tiny_suite_dict(
        teachers=[{"name": "t_at", "source": "train", "model": "mlp", "model_options": {"hidden": 32}, "method": "at",
                   "training": {"epochs": 1}}],
        students=[{"name": "mlp_small", "model": "mlp", "hidden": 16}, {"name": "mlp_wide", "model": "mlp", "hidden": 24}],
        methods={"natural": {}, "kd": {"t": 4, "alpha": 0.9}},
        evaluation={"attacks": ATTACKS, "n_examples": 60})
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The suite run once; every transfer crafting counted."""
    results = tmp_path_factory.mktemp("transfer")
    crafted = []
    original = Transfer.craft

    def counting(self, source_model, x, y, batch_size):
        crafted.append(self.source)
        return original(self, source_model, x, y, batch_size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Transfer, "craft", counting)
        outcome = run_suite(transfer_suite(), results)
    assert not outcome.failed
    return results, crafted


def records(results: Path, where: str) -> list[RunRecord]:
    return [read_record(d)[0] for d in sorted((results / where).iterdir()) if (d / store.METRICS).is_file()]


def test_teacher_transfer_is_crafted_once_and_shared_by_every_student(finished):
    results, crafted = finished
    assert crafted == ["teacher"]  # the teacher's own evaluation crafted them; both students read the cache
    (teacher_dir,) = (results / store.TEACHERS).iterdir()
    assert len(list(teacher_dir.glob("transfer-*.npz"))) == 1
    (teacher,) = records(results, store.TEACHERS)
    # on the teacher itself the transferred examples are its white-box PGD (same steps, same seeds)
    assert teacher.robust_accuracy["transfer-teacher"] == teacher.robust_accuracy["pgd5"]


def test_teacher_free_runs_have_no_transfer_column_and_the_rest_join_the_worst_case(finished, digits):
    results, _ = finished
    runs = records(results, store.RUNS)
    assert {r.method for r in runs} == {"natural", "kd"} and len(runs) == 4
    for record in runs:
        if record.method == "natural":
            assert "transfer-teacher" not in record.robust_accuracy and "transfer-teacher" not in record.attacks
            continue
        accuracy = record.robust_accuracy["transfer-teacher"]
        assert accuracy is not None and record.attacks["transfer-teacher"]["source"] == "teacher"
        arrays = load_per_example(store.run_dir(results, record.run_id) / store.PER_EXAMPLE)
        worst = arrays.correct["clean"] & arrays.not_broken("pgd5") & arrays.not_broken("transfer-teacher")
        assert record.worst_case_accuracy == pytest.approx(worst.mean())
    frame = leaderboard(results)
    assert frame.loc[frame["method"] == "natural", "transfer-teacher"].isna().all()
    assert frame.loc[frame["method"] == "kd", "transfer-teacher"].notna().all()


def test_another_run_named_as_source(finished):
    """{name: transfer, source: RUN_ID}: added to finished runs, crafted once on that run's student."""
    results, _ = finished
    _, runs = expand(suite_from_dict(transfer_suite()))
    kd = next(run for run in runs if run.method.label == "kd" and run.student.name == "mlp_small")
    attacks = [*ATTACKS, {"name": "transfer", "label": "from_kd", "source": kd.run_id, "steps": 5, "exact": True}]
    assert not run_suite(transfer_suite(evaluation={"attacks": attacks, "n_examples": 60}), results).failed
    assert len(list(store.run_dir(results, kd.run_id).glob("transfer-*.npz"))) == 1
    for record in records(results, store.RUNS):
        assert record.robust_accuracy["from_kd"] is not None
        if record.run_id == kd.run_id:  # from itself: its own white-box PGD
            assert record.robust_accuracy["from_kd"] == record.robust_accuracy["pgd5"]


def test_a_transfer_source_that_names_nothing_is_one_line():
    bad = transfer_suite(evaluation={"attacks": [{"name": "transfer", "source": "t_aat"}]})
    with pytest.raises(ConfigError, match=r"evaluation.attacks.0.source: 't_aat' is not 'teacher'.*did you mean 't_at'"):
        suite_from_dict(bad)


def test_an_unbound_transfer_attack_raises_instead_of_scoring():
    attack = build_attack("transfer-teacher", ThreatModel(eps=0.1))
    with pytest.raises(AttackError, match="no source examples"):
        attack(torch.nn.Identity(), torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


def test_rkbench_eval_refuses_a_transfer_attack_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--model", "pyautoattack", "--attacks", "transfer-teacher", "--no-cache"])
    assert result.exit_code == 2 and "error: --attacks: transfer-teacher crafts its examples" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# the report's !teacher_transfer flag, on constructed records (no torch, no training)

def write(base: Path, run_id: str, pgd20: float, transfer: float | None, n: int = 400):
    directory = base / "runs" / run_id
    directory.mkdir(parents=True)
    robust = {"pgd20": pgd20, **({"transfer-teacher": transfer} if transfer is not None else {})}
    configs = {"pgd20": {"name": "pgd20", "steps": 20}}
    if transfer is not None:
        configs["transfer-teacher"] = {"name": "transfer-teacher", "source": "teacher", "steps": 20}
    write_record(directory, RunRecord(run_id=run_id, status="finished", teacher="t" if transfer is not None else "-",
                                      student="mlp", method=run_id, seed=0, clean_accuracy=0.9, n_examples=n,
                                      robust_accuracy=robust, worst_case_accuracy=min(pgd20, transfer or 1),
                                      attacks=configs, flags=[]))


def test_teacher_transfer_flag_on_a_constructed_case(tmp_path):
    write(tmp_path, "weaker", pgd20=0.70, transfer=0.60)        # 10 points below its own PGD-20: flagged
    write(tmp_path, "noise", pgd20=0.70, transfer=0.698)        # 0.2 points (< 2 examples of 400): noise
    write(tmp_path, "stronger", pgd20=0.70, transfer=0.85)      # transfer weaker than white-box: the usual case
    write(tmp_path, "no_teacher", pgd20=0.70, transfer=None)    # teacher-free: no column, no flag
    frame = leaderboard(tmp_path)
    flags = dict(zip(frame["method"], frame["flags"].fillna("")))
    assert flags == {"weaker": "!teacher_transfer", "noise": "", "stronger": "", "no_teacher": ""}
    text = render(frame, "md")
    assert "`!teacher_transfer`: PGD-20 examples crafted on the teacher" in text
    detail = dict(zip(collect(tmp_path).runs["method"], collect(tmp_path).runs["_flags"]))["weaker"]
    assert detail == [("teacher_transfer", "transfer-teacher 60.00% < white-box pgd20 70.00%")]
