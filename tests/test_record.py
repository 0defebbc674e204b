"""The run record: one typed schema (rkbench/record.py), written in one place, read back by reports,
status and resume, with a version of its own; and the teacher cache restoring through each
source's own hook."""
import inspect
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import rkbench
from rkbench import store
from rkbench.cli import main
from rkbench.record import RECORD_VERSION, RunRecord, read_record, write_record
from rkbench.suite import Suite, expand
from rkbench.suite_evaluation import SuiteEvaluation
from rkbench.teacher_cache import TeacherCache
from rkbench.teachers import TEACHER_SOURCES, TeacherParams, TeacherSource

from conftest import tiny_suite_dict

def finished_record(run_id: str, **changes) -> RunRecord:
    fields = {"run_id": run_id, "status": "finished", "teacher": "-", "student": "mlp", "method": "natural",
              "seed": 0, "n_examples": 10, "clean_accuracy": 0.9, "robust_accuracy": {"pgd20": 0.5},
              "worst_case_accuracy": 0.5}
    return RunRecord(**{**fields, **changes})


def test_a_record_round_trips_and_carries_its_version(tmp_path):
    record = finished_record("a1", robust_accuracy={"pgd20": 0.5, "aa": None}, flags=[{"code": "x", "detail": "y"}])
    write_record(tmp_path / "a1", record)
    written = json.loads((tmp_path / "a1" / store.METRICS).read_text())
    assert written["record_version"] == RECORD_VERSION == 3
    assert written["robust_accuracy"] == {"pgd20": 0.5, "aa": None}  # None: run by the cascade, kept
    assert read_record(tmp_path / "a1") == (record, None)


def test_a_file_from_before_the_version_reads_as_version_1(tmp_path):
    old = finished_record("a1").model_dump(mode="json")
    del old["record_version"]
    store.write_json(tmp_path / "a1" / store.METRICS, old)
    record, problem = read_record(tmp_path / "a1")
    assert problem is None and record.record_version == 1 and record.clean_accuracy == 0.9


@pytest.mark.parametrize("change, expected", [
    ({"record_version": 4}, "written by a newer rkbench (record version 4; this one reads up to 3)"),
    ({"record_version": "4"}, "record_version: Input should be a valid integer"),
    ({"accuracy": 0.9}, "accuracy: Extra inputs are not permitted"),
    ({"status": "failed"}, "a failed run names its error"),
    ({"clean_accuracy": 1.5}, "clean_accuracy: Input should be less than or equal to 1"),
])
def test_a_record_outside_the_schema_is_refused_with_one_line(tmp_path, change, expected):
    data = {**finished_record("a1").model_dump(mode="json"), **change}
    store.write_json(tmp_path / "runs" / "a1" / store.METRICS, data)
    write_record(tmp_path / "runs" / "b2", finished_record("b2"))
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [f"warning: skipped {tmp_path}/runs/a1/metrics.json: "
                                                  f"{read_record(tmp_path / 'runs' / 'a1')[1]}"]
    assert expected in result.stderr
    assert "b2" in result.stdout and "a1" not in result.stdout


def test_a_run_and_its_teacher_write_their_records_through_write_record_only(tmp_path, monkeypatch):
    """Every metrics.json a suite writes goes through ``write_record`` (a spy on the one file writer
    sees each of them written from there), and reads back at this version."""
    from rkbench.api import run_suite

    written: dict[str, list[str]] = {}
    atomic_write = store.atomic_write

    def spy(path, write, mode="w"):
        if Path(path).name == store.METRICS:
            written.setdefault(str(path), []).append(" ".join(f.function for f in inspect.stack()[1:4]))
        return atomic_write(path, write, mode)

    monkeypatch.setattr(store, "atomic_write", spy)
    suite = Suite.model_validate(tiny_suite_dict(
        students=[{"name": "mlp_small", "model": "mlp", "hidden": 16}], methods={"ard": {"t": 4, "alpha": 0.9, "attack_steps": 2}},
        evaluation={"n_examples": 20, "batch_size": 20, "attacks": [{"name": "pgd", "label": "pgd5", "steps": 5}]}))
    outcome = run_suite(suite, tmp_path)
    assert [o.status for o in outcome.outcomes] == ["finished"]
    on_disk = {str(p) for p in tmp_path.rglob(store.METRICS)}
    assert len(on_disk) == 2 and set(written) == on_disk
    assert all("write_record" in caller for callers in written.values() for caller in callers), written
    for path in on_disk:
        record, problem = read_record(Path(path).parent)
        assert problem is None and record.record_version == RECORD_VERSION
        assert record.finished and record.n_examples == 20 and record.attacks == {"pgd5": {"name": "pgd", "steps": 5}}
    run = read_record(store.run_dir(tmp_path, outcome.outcomes[0].run.run_id))[0]
    assert run.protocol == "eval" and run.attack_mode == "eval" and run.versions["rkbench"] == rkbench.__version__
    assert run.loss_terms and set(run.loss_terms[0]) == {"kl", "ce"}


def test_a_record_rkbench_cannot_read_is_left_alone_and_named(tmp_path):
    """A finished run written by a newer rkbench (record version 3) is neither retrained nor
    overwritten: the run is reported with one line, ``rkbench status`` says unreadable, and the
    suite's other runs go on."""
    from rkbench.api import run_suite

    suite = Suite.model_validate(tiny_suite_dict(
        students=[{"name": "mlp_small", "model": "mlp", "hidden": 16}], methods={"natural": {}, "at": {"attack_steps": 1}},
        evaluation={"n_examples": 20, "batch_size": 20, "attacks": [{"name": "pgd", "label": "pgd5", "steps": 5}]}))
    _, runs = expand(suite)
    newer = store.run_dir(tmp_path, runs[0].run_id)
    text = json.dumps({**finished_record(runs[0].run_id).model_dump(mode="json"), "record_version": 4})
    newer.mkdir(parents=True)
    (newer / store.METRICS).write_text(text)
    outcome = run_suite(suite, tmp_path)
    assert [o.status for o in outcome.outcomes] == ["failed", "finished"]
    assert "written by a newer rkbench (record version 4" in outcome.outcomes[0].error
    assert (newer / store.METRICS).read_text() == text and not (newer / store.STUDENT).exists()
    status = CliRunner().invoke(main, ["status", str(tmp_path), "--json"])
    states = {row["id"]: row["state"] for row in json.loads(status.output)}
    assert states[runs[0].run_id] == "unreadable" and states[runs[1].run_id] == "finished"


# ----------------------------------------------------------------------------------------------
# the teacher cache knows no source's options: a source that trains restores through its own hook


class CountedParams(TeacherParams):
    width: int = 3


CALLS = {"build": 0, "restore": 0}


def counted_teacher_source():
    class Counted(TeacherSource):
        Params = CountedParams
        trains = True

        def build(self, params, context):
            CALLS["build"] += 1
            return self.network(params, context)

        def restore(self, params, context, weights):
            CALLS["restore"] += 1
            model = self.network(params, context)
            model.load_state_dict(torch.load(weights, weights_only=True))
            return model

        @staticmethod
        def network(params, context):
            torch.manual_seed(CALLS["build"] + CALLS["restore"])  # a restored copy differs unless loaded
            return nn.Sequential(nn.Flatten(), nn.Linear(64, params.width), nn.ReLU(), nn.Linear(params.width, 10))

    return Counted


def test_a_source_that_trains_without_a_restore_hook_is_refused_when_written():
    with pytest.raises(TypeError, match="trains its teachers .* but has no restore hook"):
        class Forgetful(TeacherSource):
            trains = True

            def build(self, params, context):
                return nn.Linear(1, 1)


def test_the_teacher_cache_restores_a_trained_teacher_through_its_source_hook(tmp_path, registry_snapshot, digits):
    TEACHER_SOURCES.register("counted", description="test source")(counted_teacher_source())
    CALLS.update(build=0, restore=0)
    suite = Suite.model_validate(tiny_suite_dict(
        teachers=[{"name": "t", "source": "counted", "width": 5}],
        evaluation={"n_examples": 10, "batch_size": 10, "attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}]}))
    plans, _ = expand(suite)

    def cache():
        evaluation = SuiteEvaluation(suite, lambda: digits, torch.device("cpu"))
        return TeacherCache(suite, tmp_path, lambda: digits, torch.device("cpu"), evaluation)

    first = cache().get(plans[0])
    assert CALLS == {"build": 1, "restore": 0}
    assert (store.teacher_dir(tmp_path, plans[0].teacher_id) / store.TEACHER).is_file()
    again = cache().get(plans[0])  # a new process: restored from the saved weights, not built
    assert CALLS == {"build": 1, "restore": 1}
    x = digits.x_test[:5]
    assert torch.equal(first(x), again(x)) and not again.training
    assert all(not p.requires_grad for p in again.parameters())
