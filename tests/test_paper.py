"""Paper suites and published numbers: the suites validate with their references, a bad reference
is one line naming its field, and ``--against-paper`` computes measured - paper from run files."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.errors import ConfigError
from rkbench.report import collect
from rkbench.report.paper import against_paper
from rkbench.store import Reference, read_references, write_references
from rkbench.suite import apply_overrides, expand, load_suite, suite_from_dict

from conftest import tiny_suite_dict
from test_report import write_run

ROOT = Path(__file__).resolve().parents[1]
PAPER_SUITES = ["suites/cifar10.yaml", "suites/cifar100.yaml"]


@pytest.mark.parametrize("path", PAPER_SUITES)
def test_paper_suites_validate_and_every_reference_names_a_run(path):
    suite = load_suite(ROOT / path)
    assert suite.references, f"{path} carries no published numbers"
    _, runs = expand(suite)
    rows = {(r.teacher.spec.name if r.teacher else "-", r.student.name, r.method.label) for r in runs}
    for reference in suite.references:
        assert reference.row in rows
        assert reference.paper and reference.table
        numbers = [reference.clean, reference.pgd20, reference.autoattack]
        assert any(n is not None for n in numbers)
        assert all(n is None or 0 <= n <= 100 for n in numbers)
        if reference.clean is not None:  # a published robust accuracy never exceeds the clean one
            assert all(n is None or n <= reference.clean for n in numbers[1:])


def test_paper_suite_students_are_the_papers_mobilenetv2_and_resnet18():
    for path in PAPER_SUITES:
        suite = load_suite(ROOT / path)
        assert [s.model for s in suite.students] == ["mobilenetv2", "resnet18"]


def _reference(**changes):
    reference = {"teacher": "t_at", "student": "cnn_tiny", "method": "ard", "paper": "P", "table": "T1",
                 "clean": 90.0, "pgd20": 50.0}
    reference.update(changes)
    return reference


@pytest.mark.parametrize("reference, expected", [
    (_reference(student="cnn_tin"),
     "references.0.student: no student 'cnn_tin' in the suite; did you mean 'cnn_tiny'?"),
    (_reference(method="ardd"), "references.0.method: no method 'ardd' in the suite; did you mean 'ard'?"),
    (_reference(teacher="nobody"), "references.0.teacher: 'nobody' is not a teacher of method 'ard'"),
    (_reference(method="at"), "references.0.teacher: method 'at' has no teacher"),
    (_reference(clean=None, pgd20=None), "references.0: give at least one of clean, pgd20, autoattack"),
    (_reference(pgd20=101), "references.0.pgd20: Input should be less than or equal to 100"),
    (_reference(tabel="T2"), "references.0.tabel: unknown field; did you mean 'table'?"),
    (_reference(paper=""), "references.0.paper: String should have at least 1 character"),
])
def test_a_bad_reference_is_one_line_naming_its_field(reference, expected):
    with pytest.raises(ConfigError) as info:
        suite_from_dict(tiny_suite_dict(references=[reference]), source="tiny.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_two_references_for_one_row_are_refused():
    with pytest.raises(ConfigError, match="references.1: a second reference for t_at x cnn_tiny x ard"):
        suite_from_dict(tiny_suite_dict(references=[_reference(), _reference(clean=80.0)]))


def test_references_are_not_part_of_run_ids():
    plain = expand(suite_from_dict(tiny_suite_dict()))[1]
    referenced = expand(suite_from_dict(tiny_suite_dict(references=[_reference(), _reference(
        teacher="-", method="at", student="mlp_small")])))[1]
    assert [r.run_id for r in plain] == [r.run_id for r in referenced]


def test_bad_reference_in_a_suite_file_exits_2(tmp_path):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(tiny_suite_dict(references=[_reference(clean=120)]), [])))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {path}: references.0.clean: Input should be less than "
                                                  f"or equal to 100 (see docs/suites.md#references)"]


# ----------------------------------------------------------------------------------------------
# the report against the papers, on hand-made run directories

# runs: ard (teacher tA) on mlp, seeds 0 and 1: clean 93 / 95 -> 94.0, pgd20 70 / 72 -> 71.0, aa by the
# cascade only (no accuracy of its own); at on mlp, one seed: clean 90, pgd20 60
PUBLISHED = [
    Reference(teacher="tA", student="mlp", method="ard", paper="ARD", table="Table 2", clean=95.5, pgd20=68.0,
              autoattack=60.0),
    Reference(student="mlp", method="at", paper="Madry", table="Table 1", clean=90.0, pgd20=58.5),
    Reference(teacher="tA", student="cnn_tiny", method="ard", paper="ARD", table="Table 3", pgd20=40.0),
]


@pytest.fixture()
def paper_dir(tmp_path):
    base = tmp_path / "paper_suite"
    write_run(base, "ard0", "ard", 0, "mlp", 0.93, 0.70, 0.60, teacher=True, suite="paper_suite")
    write_run(base, "ard1", "ard", 1, "mlp", 0.95, 0.72, 0.62, teacher=True, suite="paper_suite")
    write_run(base, "at0", "at", 0, "mlp", 0.90, 0.60, 0.55, suite="paper_suite")
    write_run(base, "other", "ard", 0, "mlp", 0.10, 0.10, 0.10, teacher=True, suite="another_suite")
    write_references(base, "paper_suite", PUBLISHED)
    return base


def _by(frame, method, student, metric):
    rows = frame[(frame["method"] == method) & (frame["student"] == student) & (frame["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_difference_is_measured_minus_paper_and_flagged_beyond_tolerance(paper_dir):
    frame = against_paper(collect(paper_dir), tolerance=2.0)
    assert len(frame) == 6  # one row per published number
    clean = _by(frame, "ard", "mlp", "clean")
    assert (clean["paper_value"], clean["measured"], clean["seeds"]) == (95.5, pytest.approx(94.0), 2)
    assert clean["difference"] == pytest.approx(-1.5) and clean["flag"] == ""
    pgd = _by(frame, "ard", "mlp", "pgd20")
    assert pgd["difference"] == pytest.approx(3.0) and pgd["flag"] == "!off"
    assert (pgd["paper"], pgd["table"], pgd["teacher"]) == ("ARD", "Table 2", "tA")
    at = _by(frame, "at", "mlp", "pgd20")
    assert at["teacher"] == "-" and at["difference"] == pytest.approx(1.5) and at["flag"] == ""
    for method, student, metric in [("ard", "mlp", "autoattack"), ("ard", "cnn_tiny", "pgd20")]:
        missing = _by(frame, method, student, metric)  # a cascade column, and a row never run
        assert missing["seeds"] == 0 and missing["flag"] == "" and missing["difference"] != missing["difference"]
    tight = against_paper(collect(paper_dir), tolerance=1.0)
    assert list(tight["flag"]).count("!off") == 3  # now clean (-1.5) and at's pgd20 (+1.5) too


def test_report_against_paper_prints_paper_measured_and_difference(paper_dir):
    result = CliRunner().invoke(main, ["report", str(paper_dir), "--against-paper"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == ("| teacher | student | method | metric | paper_value | measured | difference | flag | seeds "
                        "| paper | table |")
    assert "| tA | mlp | ard | pgd20 | 68.00 | 71.00 | +3.00 | !off | 2 | ARD | Table 2 |" in lines
    assert "| tA | mlp | ard | clean | 95.50 | 94.00 | -1.50 |  | 2 | ARD | Table 2 |" in lines
    assert "| tA | cnn_tiny | ard | pgd20 | 40.00 | - | - |  | 0 | ARD | Table 3 |" in lines
    assert "(1 of 6 numbers)" in result.output
    loose = CliRunner().invoke(main, ["report", str(paper_dir), "--against-paper", "--tolerance", "5",
                                      "--format", "json"])
    document = json.loads(loose.output)
    assert document["tolerance"] == 5.0 and not any(row["flag"] for row in document["rows"])
    pgd = next(r for r in document["rows"] if r["metric"] == "pgd20" and r["student"] == "mlp"
               and r["method"] == "ard")
    assert (pgd["paper_value"], pgd["measured"], pgd["difference"]) == (68.0, 71.0, 3.0)


def test_report_against_paper_refuses_what_it_cannot_show(paper_dir, tmp_path):
    for extra, message in [(["--format", "html"], "--against-paper writes md, csv or json, not html"),
                           (["--tolerance", "-1"], "--tolerance must be >= 0 points"),
                           (["--pivot", "method"], "drop --pivot")]:
        result = CliRunner().invoke(main, ["report", str(paper_dir), "--against-paper", *extra])
        assert result.exit_code == 2 and message in result.output
    bare = tmp_path / "bare"
    write_run(bare, "at0", "at", 0, "mlp", 0.90, 0.60, 0.55)
    result = CliRunner().invoke(main, ["report", str(bare), "--against-paper"])
    assert result.exit_code == 2 and "no published numbers" in result.output


def test_a_corrupt_references_file_is_skipped_with_a_warning(paper_dir, capsys):
    (paper_dir / "references.json").write_text(json.dumps({"paper_suite": [{"student": "mlp"}]}))
    found, problem = read_references(paper_dir)
    assert found == {} and "paper_suite" in problem
    assert against_paper(collect(paper_dir)).empty
    assert "warning: skipped" in capsys.readouterr().err


def test_write_references_keeps_other_suites(tmp_path):
    write_references(tmp_path, "a", PUBLISHED[:1])
    write_references(tmp_path, "b", PUBLISHED[1:])
    write_references(tmp_path, "a", [])
    found, problem = read_references(tmp_path)
    assert problem is None and list(found) == ["b"] and found["b"] == PUBLISHED[1:]


def test_the_cyclic_schedule_is_locuslabs_triangle():
    from rkbench.suite import ScheduleConfig
    from rkbench.train import lr_factor

    cyclic = ScheduleConfig(name="cyclic")
    assert [lr_factor(cyclic, e, 10) for e in (0, 2.5, 5, 7.5, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])


def _recipe(suite, label):
    spec = next(m for m in suite.methods if m.label == label)
    return spec.params, suite.training_for(spec.training, label)


def test_paper_suites_run_the_official_recipes():
    """The numbers docs/methods.md traces to the official code (file and line), as the suites run them."""
    for path in PAPER_SUITES:
        suite = load_suite(ROOT / path)
        _, at = _recipe(suite, "at")
        assert (at.epochs, at.optimizer.weight_decay, at.schedule.milestones) == (200, 2e-4, [100, 150])
        for label in ("ard", "iad", "kdiga"):  # the second decay of their scripts never fires
            assert _recipe(suite, label)[1].schedule.milestones == [100]
        _, free = _recipe(suite, "free_at")
        assert (free.epochs, free.schedule.name, free.optimizer.lr) == (80, "cyclic", 0.04)
        teacher = suite.teacher("at_resnet18").options["training"]
        assert (teacher["epochs"], teacher["optimizer"]["weight_decay"], teacher["schedule"]["milestones"]) == \
            (200, 0.0002, [99, 149])
    cifar100 = load_suite(ROOT / "suites/cifar100.yaml")
    params, training = _recipe(cifar100, "ard")
    assert (params["t"], params["alpha"], training.batch_size) == (5, 0.93, 256)
    assert _recipe(cifar100, "kdiga")[1].batch_size == 256
