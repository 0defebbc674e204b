import json
import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.models import build_model

from conftest import records, tiny_suite_dict


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny suite run once through the CLI."""
    base = tmp_path_factory.mktemp("e2e")
    suite = base / "tiny.yaml"
    reference = {"teacher": "t_at", "student": "cnn_tiny", "method": "ard", "paper": "P", "table": "T", "clean": 50.0}
    suite.write_text(yaml.safe_dump(tiny_suite_dict(references=[reference])))
    results = base / "results"
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(results), "--quiet"])
    assert result.exit_code == 0, result.output
    return suite, results, result.output


def test_run_writes_leaderboard_with_every_method_and_student(finished):
    _, results, output = finished
    frame = pd.read_csv(results / "leaderboard.csv")
    assert len(frame) == 8
    assert set(frame["method"]) == {"natural", "kd", "at", "ard"}
    assert set(frame["student"]) == {"cnn_tiny", "mlp_small"}
    assert set(frame.loc[frame.method.isin(["kd", "ard"]), "teacher"]) == {"t_at"}
    assert frame["status"].eq("finished").all()
    assert ((frame["pgd5"] <= frame["clean"]) & (frame["worst_case"] <= frame["pgd5"])).all()
    assert "Leaderboard" in output and "ard" in output
    markdown = (results / "leaderboard.md").read_text()
    assert markdown.startswith("Training-attack protocol: eval;")  # the default protocol
    assert "\n| teacher | student | method | attack_mode | seeds | clean | pgd5 | worst_case |" in markdown
    modes = dict(zip(frame["method"], frame["attack_mode"].fillna("-")))
    assert modes == {"natural": "-", "kd": "-", "at": "eval", "ard": "eval"} and set(frame["protocol"]) == {"eval"}
    assert "Teachers" in markdown


def test_run_records_the_references_and_reports_set_them_beside_the_runs(finished):
    _, results, _ = finished
    recorded = json.loads((results / "references.json").read_text())
    assert [r["method"] for r in recorded["tiny"]] == ["ard"]
    assert "Against the papers" in (results / "leaderboard.md").read_text()
    document = json.loads(CliRunner().invoke(main, ["report", str(results), "--against-paper", "--format",
                                                    "json"]).output)
    frame = pd.read_csv(results / "leaderboard.csv")
    measured = frame[(frame.method == "ard") & (frame.student == "cnn_tiny")]["clean"].item()
    assert [(r["metric"], r["paper_value"], r["measured"]) for r in document["rows"]] == [("clean", 50.0, measured)]
    assert document["rows"][0]["difference"] == pytest.approx(measured - 50.0, abs=0.01)


def test_run_directories_hold_config_metrics_checkpoint_log(finished):
    _, results, _ = finished
    runs = sorted((results / "runs").iterdir())
    assert len(runs) == 8
    for run in runs:
        assert {"config.json", "metrics.json", "model.safetensors", "log.txt", "per_example.npz"} <= {p.name for p in run.iterdir()}
        assert not list(run.glob("*.tmp")) and not (run / "checkpoint.pt").exists()
    for run_id, record in records(results).items():
        assert record.run_id == run_id and record.n_examples == 100
    teachers = list((results / "teachers").iterdir())
    assert len(teachers) == 1 and (teachers[0] / "model.safetensors").is_file()
    (teacher,) = records(results, "teachers").values()
    assert (teacher.protocol, teacher.attack_mode) == ("eval", "eval")
    config = json.loads((teachers[0] / "config.json").read_text())
    assert config["identity"]["protocol"] == {"attack_mode": "eval"}


def test_named_loss_terms_reach_metrics_and_the_log(finished):
    """ard names its terms (kl; ce only when alpha < 1): one mapping per epoch in metrics.json, and in
    each epoch's log line; methods that return one scalar record none."""
    _, results, _ = finished
    by_method = {record.method: record for record in records(results).values()}
    ard = by_method["ard"]
    assert [list(epoch) for epoch in ard.loss_terms] == [["kl"]] and ard.loss_terms[0]["kl"] > 0
    assert f"[kl {ard.loss_terms[0]['kl']:.4f}]" in (results / "runs" / ard.run_id / "log.txt").read_text()
    assert by_method["natural"].loss_terms is None


def test_metrics_match_the_saved_student(finished, digits):
    _, results, _ = finished
    record = next(r for r in records(results).values() if r.method == "natural")
    model = build_model(record.model, 10, (1, 8, 8), **({"hidden": 32} if record.model == "mlp" else {}))
    model.load_state_dict(load_file(results / "runs" / record.run_id / "model.safetensors"))
    with torch.no_grad():
        clean = (model.eval()(digits.x_test[:100]).argmax(1) == digits.y_test[:100]).float().mean().item()
    assert clean == pytest.approx(record.clean_accuracy)


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_report_rebuilds_the_same_table_from_files(finished, fmt, tmp_path):
    _, results, _ = finished
    out = tmp_path / f"board.{fmt}"
    result = CliRunner().invoke(main, ["report", str(results), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        assert out.read_text() == (results / "leaderboard.csv").read_text()
    elif fmt == "md":
        assert (results / "leaderboard.md").read_text().startswith(out.read_text())
    else:
        rows = json.loads(out.read_text())["rows"]
        assert {r["run_id"] for r in rows} == set(pd.read_csv(results / "leaderboard.csv")["run_id"])


def test_rerun_skips_finished_runs(finished):
    suite, results, _ = finished
    stamps = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*/model.safetensors")}
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(results), "--quiet"])
    assert result.exit_code == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*/model.safetensors")}
    assert not any(line.startswith("training ") for line in result.output.splitlines())  # the runner's messages


def test_dry_run_lists_the_matrix_and_trains_nothing(finished, tmp_path):
    suite, _, _ = finished
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(tmp_path / "r"), "--dry-run"])
    assert result.exit_code == 0 and result.output.count("cnn_tiny") >= 4
    assert not (tmp_path / "r").exists()


def test_list_shows_registries():
    for kind, expected in [("methods", "ard"), ("models", "mobilenetv2"), ("datasets", "digits"),
                           ("attacks", "pgd20"), ("teachers", "checkpoint")]:
        result = CliRunner().invoke(main, ["list", kind])
        assert result.exit_code == 0 and expected in result.output


def test_share_teacher_lockstep_equals_separate_runs(finished, tmp_path):
    """Lock-step training (one teacher pass per batch for every student) gives the same weights and
    metrics as separate runs with the same seeds, and the log says the teacher was shared."""
    suite, results, _ = finished
    shared = tmp_path / "shared"
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(shared), "--quiet", "--share-teacher"])
    assert result.exit_code == 0, result.output
    assert "in lock-step with" in result.output
    separate = pd.read_csv(results / "leaderboard.csv").drop(columns=["train_s"], errors="ignore")
    together = pd.read_csv(shared / "leaderboard.csv").drop(columns=["train_s"], errors="ignore")
    pd.testing.assert_frame_equal(separate, together)
    for run in (results / "runs").iterdir():
        a = load_file(run / "model.safetensors")
        b = load_file(shared / "runs" / run.name / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [(shared / "runs" / r / "log.txt").read_text() for r in os.listdir(shared / "runs")]
    assert sum("in lock-step with" in log for log in logs) >= 2
