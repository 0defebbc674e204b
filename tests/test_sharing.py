"""Students people can share and watch (docs/sharing.md): weights as model.safetensors that nothing
rkbench loads ever unpickles, ``rkbench export`` / ``rkbench.load_model`` / ``rkbench eval`` round
trips, and TensorBoard curves read back with TensorBoard's own reader.

One tiny digits suite (an in-suite teacher, an ARD student) is run once for the whole module."""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import pickle
import shutil
from pathlib import Path
from unittest import mock

import pytest
from conftest import invoke_cli
import torch
import yaml

import rkbench
from rkbench.errors import ConfigError
from rkbench.suite import expand, suite_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = {
    "name": "share",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 2},
    "teachers": [{"name": "t_nat", "source": "train", "model": "mlp", "method": "natural",
                  "training": {"epochs": 3}}],
    "students": ["mlp"],
    "methods": {"ard": {"t": 4, "alpha": 0.9, "attack_steps": 1}},  # named loss terms: kl, ce
    "training": {"epochs": 3, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [1]},
    # a random start: eval repeats the run's numbers only with the run's seed
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3, "random_start": True}], "n_examples": 120},
}
# one more attack: finished runs and teachers are evaluated again (loaded from their files), not retrained
MORE_ATTACKS = ("evaluation.attacks=[{name: pgd, label: pgd3, steps: 3, random_start: true}, "
                "{name: pgd, label: pgd4, steps: 4}]")


def invoke(args):
    return invoke_cli(*args)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(suite file, results directory, run directory, teacher directory) of the suite, run with --tensorboard."""
    base = tmp_path_factory.mktemp("share")
    suite_file = base / "share.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    results = base / "results"
    result = invoke(["run", suite_file, "--results-dir", results, "--quiet", "--tensorboard"])
    assert result.exit_code == 0, result.output
    (run,) = (results / "runs").iterdir()
    (teacher,) = (results / "teachers").iterdir()
    return suite_file, results, run, teacher


def record_of(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


@contextlib.contextmanager
def no_unpickling(allow_weights_only: bool = False):
    """Every ``torch.load`` is recorded as (file name, weights_only) and refused, unless
    ``allow_weights_only`` and it passed ``weights_only=True``; pickle's loaders always raise."""
    calls = []
    real = torch.load

    def spy(f, *args, **kwargs):
        calls.append((Path(str(f)).name, kwargs.get("weights_only")))
        if not (allow_weights_only and kwargs.get("weights_only") is True):
            raise AssertionError(f"torch.load({f}) unpickles")
        return real(f, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used to load")

    with mock.patch.object(torch, "load", spy), mock.patch("torch.serialization.load", spy), \
            mock.patch.object(pickle, "Unpickler", refuse), mock.patch.object(pickle, "load", refuse), \
            mock.patch.object(pickle, "loads", refuse):
        yield calls


def accuracy_on_test(model, n: int) -> float:
    from rkbench.data import load_dataset

    data = load_dataset("digits")
    with torch.no_grad():
        return float((model(data.x_test[:n]).argmax(1) == data.y_test[:n]).float().mean())


# ----------------------------------------------------------------------------------------------
# safetensors


def test_a_digits_run_holds_model_safetensors_and_nothing_rkbench_loads_from_it_unpickles(finished, tmp_path):
    _, results, run, teacher = finished
    for directory in (run, teacher):
        names = {p.name for p in directory.iterdir()}
        assert {"model.safetensors", "model.json"} <= names and not names & {"student.pt", "teacher.pt"}
        config = json.loads((directory / "model.json").read_text())
        assert (config["architecture"], config["num_classes"], config["input_shape"]) == ("mlp", 10, [1, 8, 8])
        assert config["normalization"] == {"where": "none"}
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    record = record_of(run)
    with no_unpickling() as calls:
        student = rkbench.load_model(run)  # the API
        teacher_model = rkbench.load_model(teacher)
        listed = invoke(["eval", run, "--no-cache", "--json"])  # the CLI, with the run's recorded protocol
        # the runner: a new attack re-evaluates the finished run and its teacher, restored from their files
        outcome = rkbench.run_suite(SUITE, copy, overrides=[MORE_ATTACKS])
    assert calls == []
    assert accuracy_on_test(student, 120) == pytest.approx(record["clean_accuracy"])
    assert accuracy_on_test(teacher_model, 120) == pytest.approx(record_of(teacher)["clean_accuracy"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["robust_accuracy"]["pgd3"] == record["robust_accuracy"]["pgd3"]
    assert [o.status for o in outcome.outcomes] == ["finished"]
    again = record_of(copy / "runs" / run.name)
    assert "pgd4" in again["attacks"] and again["clean_accuracy"] == record["clean_accuracy"]
    assert "pgd4" in record_of(copy / "teachers" / teacher.name)["attacks"]


def test_a_student_pt_of_an_older_run_is_still_read_with_weights_only(finished, tmp_path):
    from safetensors.torch import load_file

    _, results, run, teacher = finished
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for directory, legacy in ((copy / "runs" / run.name, "student.pt"), (copy / "teachers" / teacher.name, "teacher.pt")):
        torch.save(load_file(directory / "model.safetensors"), directory / legacy)
        (directory / "model.safetensors").unlink()
        (directory / "model.json").unlink()
    with no_unpickling(allow_weights_only=True) as calls:
        outcome = rkbench.run_suite(SUITE, copy, overrides=[MORE_ATTACKS])
    assert sorted(calls) == [("student.pt", True), ("teacher.pt", True)]
    assert [o.status for o in outcome.outcomes] == ["finished"]
    again = record_of(copy / "runs" / run.name)
    assert "pgd4" in again["attacks"] and again["clean_accuracy"] == record_of(run)["clean_accuracy"]


# ----------------------------------------------------------------------------------------------
# export, load_model, eval


def robustbench_model_info_fields() -> set[str]:
    """The fields of ``robustbench.utils.ModelInfo``, read from the installed package's source
    (importing robustbench takes long and needs autoattack)."""
    spec = importlib.util.find_spec("robustbench")
    source = Path(spec.origin).parent / "utils.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "ModelInfo":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("robustbench.utils has no ModelInfo")


def test_export_then_load_then_eval_gives_the_recorded_accuracy_on_the_same_examples(finished, tmp_path):
    from safetensors.torch import load_file

    from rkbench.report.stats import wilson

    _, results, run, teacher = finished
    copy = tmp_path / "results"  # exported from a copy that is then deleted: the folder stands alone
    shutil.copytree(results, copy)
    out = tmp_path / "exported"
    result = invoke(["export", copy / "runs" / run.name, "--out", out])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "MODEL_CARD.md", "model_info.json"}
    shutil.rmtree(copy)
    record = record_of(run)

    model = rkbench.load_model(out)
    original = load_file(run / "model.safetensors")
    assert set(model.state_dict()) == set(original)
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)

    with no_unpickling() as calls:
        evaluated = invoke(["eval", out, "--no-cache", "--json"])
    assert calls == [] and evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.output)
    assert summary["n_examples"] == record["n_examples"] == 120
    assert summary["clean_accuracy"] == record["clean_accuracy"]
    assert summary["robust_accuracy"] == record["robust_accuracy"]
    assert summary["worst_case_accuracy"] == record["worst_case_accuracy"]
    assert 0 < record["robust_accuracy"]["pgd3"] < record["clean_accuracy"]  # the attack changed outcomes
    fewer = invoke(["eval", out, "--no-cache", "--json", "--n-examples", "40", "--attacks", "pgd20"])  # options win
    assert fewer.exit_code == 0, fewer.output
    assert json.loads(fewer.output)["n_examples"] == 40 and list(json.loads(fewer.output)["robust_accuracy"]) == ["pgd20"]

    info = json.loads((out / "model_info.json").read_text())
    assert set(info) <= robustbench_model_info_fields()
    assert {"name", "architecture", "dataset", "eps", "clean_acc", "autoattack_acc", "reported", "additional_data",
            "number_forward_passes"} <= set(info)
    assert info["clean_acc"] == f"{100 * record['clean_accuracy']:.2f}"
    assert info["autoattack_acc"] == f"{100 * record['worst_case_accuracy']:.2f}"
    assert (info["dataset"], info["eps"], info["architecture"]) == ("digits", "0.1", "mlp")
    assert "not an AutoAttack accuracy" in info["footnote"]

    card = (out / "MODEL_CARD.md").read_text()
    teacher_sha = __import__("hashlib").sha256((teacher / "model.safetensors").read_bytes()).hexdigest()
    assert f"teacher id `{teacher.name}`" in card and teacher_sha in card and "source `train`" in card
    n = record["n_examples"]
    for label, accuracy in [("clean", record["clean_accuracy"]), ("pgd3", record["robust_accuracy"]["pgd3"]),
                            ("worst case", record["worst_case_accuracy"])]:
        lo, hi = wilson(round(accuracy * n), n)
        assert f"| {label} | {100 * accuracy:.2f} | {100 * lo:.2f} - {100 * hi:.2f} |" in card
    assert f"rkbench {rkbench.__version__}" in card and "rkbench eval THIS_FOLDER" in card


def test_export_and_load_model_refuse_bad_input_in_one_line(finished, tmp_path):
    _, results, run, teacher = finished
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    for args, expected in [
            (["export", run, "--out", taken], "exists and is not an empty directory"),
            (["export", teacher, "--out", tmp_path / "a"], "a teacher directory"),
            (["export", tmp_path, "--out", tmp_path / "b"], "not a run directory of rkbench"),
            (["eval", tmp_path / "taken", "--no-cache"], "not a finished run or teacher directory"),
            (["eval", run, "--model", run, "--no-cache"], "give the model once")]:
        result = invoke(args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and expected in result.output and "Traceback" not in result.output
    assert (taken / "mine.txt").read_text() == "keep" and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="holds no model.safetensors"):
        rkbench.load_model(taken)


# ----------------------------------------------------------------------------------------------
# TensorBoard


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_are_read_back_with_tensorboards_own_reader(finished):
    _, _, run, teacher = finished
    record = record_of(run)
    found = scalars(run / "tensorboard")
    assert [step for step, _ in found["loss"]] == [1, 2, 3]
    assert [value for _, value in found["loss"]] == pytest.approx(record["losses"], rel=1e-6)
    for name in record["loss_terms"][0]:
        assert [v for _, v in found[f"loss_terms/{name}"]] == pytest.approx([e[name] for e in record["loss_terms"]])
    # the cosine schedule's rate at each epoch's last step (11 steps of 128 of the 1347 training digits)
    from rkbench.data import load_dataset
    from rkbench.suite import ScheduleConfig
    from rkbench.train import lr_factor

    data = load_dataset("digits")
    steps = -(-data.x_train.shape[0] // 128)
    expected = [0.05 * lr_factor(ScheduleConfig(), (epoch * steps - 1) / steps, 3) for epoch in (1, 2, 3)]
    assert [value for _, value in found["learning_rate"]] == pytest.approx(expected, rel=1e-6)
    # the training accuracy: clean, eval mode, the first 1000 training examples; after the last epoch,
    # that of the saved student
    accuracy = [value for _, value in found["train_accuracy"]]
    with torch.no_grad():
        final = (rkbench.load_model(run)(data.x_train[:1000]).argmax(1) == data.y_train[:1000]).float().mean()
    assert len(accuracy) == 3 and accuracy[-1] == pytest.approx(float(final))
    assert found["evaluation/clean"] == [(3, pytest.approx(record["clean_accuracy"]))]
    assert found["evaluation/pgd3"] == [(3, pytest.approx(record["robust_accuracy"]["pgd3"]))]
    assert [step for step, _ in scalars(teacher / "tensorboard")["loss"]] == [1, 2, 3]  # the in-suite teacher too


def test_the_tensorboard_log_writes_every_per_epoch_series_a_record_holds(tmp_path):
    """The generic hook for validation values (whatever the record calls them): every list of
    {name: number}, one per epoch, besides the loss terms."""
    from rkbench.tensorboard_log import TensorBoardLog

    board = TensorBoardLog(tmp_path)
    board.record({"validation": [{"clean": 0.5, "pgd": 0.25}, {"clean": 0.75, "pgd": 0.5}],
                  "loss_terms": [{"kl": 9.0}], "flags": [{"code": "x", "detail": "y"}], "clean_accuracy": 0.8,
                  "robust_accuracy": {"pgd3": None}}, epochs=2)
    board.close()
    found = scalars(tmp_path / "tensorboard")
    assert found["validation/clean"] == [(1, 0.5), (2, 0.75)] and found["validation/pgd"] == [(1, 0.25), (2, 0.5)]
    assert found["evaluation/clean"] == [(2, pytest.approx(0.8))]
    assert not any(tag.startswith(("loss_terms", "flags")) for tag in found) and "evaluation/pgd3" not in found


def test_logging_is_no_part_of_run_ids():
    plain = expand(suite_from_dict(SUITE))
    logged = expand(suite_from_dict({**SUITE, "logging": {"tensorboard": True}}))
    assert [r.run_id for r in plain[1]] == [r.run_id for r in logged[1]]
    assert [t.teacher_id for t in plain[0]] == [t.teacher_id for t in logged[0]]


def test_measuring_the_training_accuracy_leaves_training_unchanged():
    from rkbench.data import load_dataset
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer

    data = load_dataset("digits")
    config = TrainingConfig(epochs=2, batch_size=256)

    def train(hook):
        torch.manual_seed(0)
        model = build_model("cnn_tiny", 10, data.input_shape)  # BatchNorm: an eval pass must not move it
        Trainer(config, torch.device("cpu"), on_epoch_end=hook).fit(
            model, build_method("at", {"attack_steps": 1}, ThreatModel(eps=0.1)), data)
        return model.state_dict()

    seen = []
    plain, watched = train(None), train(lambda epoch, values: seen.append((epoch, values["train_accuracy"])))
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert all(torch.equal(plain[k], watched[k]) for k in plain)


# ----------------------------------------------------------------------------------------------
# the HTML report's loss curves


def test_the_html_report_draws_each_runs_loss_curves_in_a_real_browser(finished, tmp_path):
    import re

    from test_report import CHROMIUM, _chromium_dom

    _, results, run, _ = finished
    record = record_of(run)
    page = tmp_path / "board.html"
    result = invoke(["report", results, "--format", "html", "--out", page])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    chart = re.search(rf'<svg class="loss-curve" data-run="{run.name}".*?</svg>', text, re.S).group(0)
    lines = re.findall(r'<polyline data-series="([^"]+)" data-epochs="(\d+)"[^>]*points="([^"]+)"', chart)
    assert [(name, int(epochs)) for name, epochs, _ in lines] == [("loss", 3), *((n, 3) for n in record["loss_terms"][0])]
    assert set(record["loss_terms"][0]) == {"kl", "ce"}
    # the drawn heights follow metrics.json: a larger loss is drawn higher (smaller y)
    drawn = {name: [float(point.split(",")[1]) for point in points.split()] for name, _, points in lines}
    values = {"loss": record["losses"], **{name: [e[name] for e in record["loss_terms"]] for name in ("kl", "ce")}}
    pairs = [(values[name][i], drawn[name][i]) for name in values for i in range(3)]
    assert all((a[0] - b[0]) * (a[1] - b[1]) <= 0 for a in pairs for b in pairs)
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    dom, log = _chromium_dom(page, "", tmp_path / "profile")
    assert 'data-ready="1"' in dom and not re.search(r"<html[^>]*data-errors", dom)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    drawn_svg = re.search(rf'<svg class="loss-curve" data-run="{run.name}"[^>]*>', dom).group(0)
    assert float(re.search(r'data-length="([0-9.]+)"', drawn_svg).group(1)) > 0  # laid out as SVG lines


def test_tensorboard_logging_without_the_package_is_one_line_before_any_training(tmp_path, monkeypatch):
    suite_file = tmp_path / "share.yaml"
    suite_file.write_text(yaml.safe_dump({**SUITE, "logging": {"tensorboard": True}}, sort_keys=False))
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    result = invoke(["run", suite_file, "--results-dir", tmp_path / "results", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: logging.tensorboard needs the tensorboard package")
    assert not (tmp_path / "results" / "runs").exists() and not (tmp_path / "results" / "teachers").exists()


def test_the_config_json_a_run_writes_is_read_back_by_the_reports(finished, capsys):
    """config.json carries the evaluation protocol (for export) beside its identity; the readers of
    damaged configs (store.read_config) must still accept the files rkbench itself writes."""
    from rkbench.store import read_config

    _, _, run, teacher = finished
    directories = [run, teacher]
    assert all((p / "config.json").is_file() for p in directories) and all(isinstance(read_config(p), dict) for p in directories)
    assert "warning: ignored" not in capsys.readouterr().err
