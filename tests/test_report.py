"""Reports from result files: expected values computed here from the metrics written here."""
import io
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.record import RunRecord, write_record
from rkbench.report import collect, leaderboard, render, write_leaderboard
from rkbench.report.plots import pareto_front

CHROMIUM = Path("/usr/bin/chromium")
TEACHER_IDENTITY = {"source": "train", "model": "cnn_small", "method": "at", "seed": 0}


MODES = {"at": "eval", "ard": "eval", "akd": "eval"}  # the mode each method crafted in (others: none)


def identity(method, seed, student="mlp", teacher=False, protocol="eval"):
    return {"schema": 1, "dataset": {"name": "digits", "options": {}}, "threat": {"norm": "linf", "eps": 0.1},
            "teacher": TEACHER_IDENTITY if teacher else None, "student": {"model": student, "options": {}},
            "method": {"name": method, "params": {}}, "training": {"epochs": 2},
            "protocol": {"attack_mode": protocol}, "seed": seed}


def write_run(base: Path, run_id: str, method: str, seed: int, student: str, clean: float, pgd: float, worst: float,
              teacher: bool = False, flags=(), status: str = "finished", suite: str = "suite_a", label=None,
              train_s: float = 1.0, protocol: str = "eval"):
    directory = base / "runs" / run_id
    directory.mkdir(parents=True)
    fields = {"run_id": run_id, "teacher": "tA" if teacher else "-", "student": student, "method": label or method,
              "seed": seed, "model": student, "protocol": protocol, "attack_mode": MODES.get(method), "status": status,
              "train_seconds": train_s, "parameters": {"mlp": 26122, "cnn_tiny": 5226}[student],
              "madds": {"mlp": 25856, "cnn_tiny": 83264}[student]}
    if status == "finished":
        fields.update({"clean_accuracy": clean, "robust_accuracy": {"pgd20": pgd, "aa": None},
                       "worst_case_accuracy": worst, "n_examples": 100,
                       "flags": [{"code": code, "detail": f"{code} detail"} for code in flags]})
    else:
        fields["error"] = "RuntimeError: exploded"
    write_record(directory, RunRecord(**fields))
    (directory / "config.json").write_text(json.dumps(
        {"run_id": run_id, "identity": identity(method, seed, student, teacher, protocol), "suite": suite}))


def write_teacher(base: Path):
    directory = base / "teachers" / "teacher01"
    directory.mkdir(parents=True)
    write_record(directory, RunRecord(
        run_id="teacher01", teacher="tA", source="train", model="cnn_small", status="finished",
        clean_accuracy=0.99, robust_accuracy={"pgd20": 0.80, "aa": None}, worst_case_accuracy=0.75,
        parameters=62506, madds=937216, flags=[]))
    (directory / "config.json").write_text(json.dumps({"teacher": "tA", "identity": TEACHER_IDENTITY}))


# (run_id, method, seed, student, clean, pgd20, worst case, teacher?, flags)
RUNS_A = [
    ("at_mlp_0", "at", 0, "mlp", 0.90, 0.60, 0.55, False, ()),
    ("at_mlp_1", "at", 1, "mlp", 0.92, 0.62, 0.57, False, ("zero_gradients",)),
    ("ard_mlp_0", "ard", 0, "mlp", 0.93, 0.70, 0.60, True, ()),
    ("ard_mlp_1", "ard", 1, "mlp", 0.95, 0.72, 0.64, True, ()),
    ("ard_mlp_2", "ard", 2, "mlp", 0.94, 0.71, 0.62, True, ()),
    ("nat_mlp_0", "natural", 0, "mlp", 0.97, 0.10, 0.10, False, ()),
    ("at_cnn_0", "at", 0, "cnn_tiny", 0.91, 0.52, 0.50, False, ()),
    ("kd_cnn_0", "kd", 0, "cnn_tiny", 0.98, 0.33, 0.30, True, ()),
]
RUNS_B = [  # a new method in its own directory, beside a copy of one baseline run
    ("akd_mlp_0", "akd", 0, "mlp", 0.94, 0.74, 0.66, True, ()),
    ("akd_mlp_1", "akd", 1, "mlp", 0.96, 0.77, 0.69, True, ()),
    ("at_mlp_0", "at", 0, "mlp", 0.90, 0.60, 0.55, False, ()),
]


@pytest.fixture()
def dirs(tmp_path):
    a, b = tmp_path / "suite_a", tmp_path / "suite_b"
    write_teacher(a)
    for run_id, method, seed, student, clean, pgd, worst, teacher, flags in RUNS_A:
        write_run(a, run_id, method, seed, student, clean, pgd, worst, teacher, flags, train_s=1.0 + seed)
    write_run(a, "failed_cnn", "ard", 0, "cnn_tiny", 0, 0, 0, True, status="failed")
    for run_id, method, seed, student, clean, pgd, worst, teacher, flags in RUNS_B:
        write_run(b, run_id, method, seed, student, clean, pgd, worst, teacher, flags,
                  suite="suite_a" if run_id.startswith("at") else "suite_b")
    return a, b


def row(frame, **where):
    mask = pd.Series(True, index=frame.index)
    for key, value in where.items():
        mask &= frame[key] == value
    assert mask.sum() == 1, (where, frame[list(where)])
    return frame[mask].iloc[0]


def expected(runs, method, student, index):
    return [100 * r[index] for r in runs if r[1] == method and r[3] == student]


def test_mean_std_over_seeds_and_derived_columns(dirs):
    a, _ = dirs
    frame = leaderboard(a)
    ard = row(frame, method="ard", student="mlp")
    worst = expected(RUNS_A, "ard", "mlp", 6)
    assert ard["seeds"] == 3 and ard["seed_list"] == "0 1 2"
    assert ard["worst_case"] == pytest.approx(statistics.mean(worst))
    assert ard["worst_case_std"] == pytest.approx(statistics.stdev(worst))
    assert ard["clean"] == pytest.approx(statistics.mean(expected(RUNS_A, "ard", "mlp", 4)))
    assert ard["pgd20_std"] == pytest.approx(statistics.stdev(expected(RUNS_A, "ard", "mlp", 5)))
    # the teacher's own accuracy, from teachers/*/metrics.json, matched through the identity in config.json
    assert ard["teacher_clean"] == pytest.approx(99.0) and ard["teacher_worst_case"] == pytest.approx(75.0)
    assert ard["transfer_ratio"] == pytest.approx(statistics.mean(w / 75.0 for w in worst))
    at_mlp = statistics.mean(expected(RUNS_A, "at", "mlp", 6))
    assert ard["delta_at"] == pytest.approx(statistics.mean(worst) - at_mlp)
    kd = row(frame, method="kd", student="cnn_tiny")
    assert kd["delta_at"] == pytest.approx(30.0 - 50.0) and kd["seeds"] == 1 and math.isnan(kd["worst_case_std"])
    assert row(frame, method="at", student="mlp")["delta_at"] == pytest.approx(0.0)
    natural = row(frame, method="natural")
    assert math.isnan(natural["teacher_worst_case"]) and math.isnan(natural["transfer_ratio"])
    # cost: mean training time over seeds; parameters and MAdds as recorded
    assert ard["train_s"] == pytest.approx(statistics.mean([1.0, 2.0, 3.0]))
    assert ard["params"] == 26122 and ard["madds"] == 25856
    # flags: a marker per code, with the share of seeds that raised it
    assert row(frame, method="at", student="mlp")["flags"] == "!zero_gradients(1/2)"
    assert ard["flags"] == ""
    # the cascade column has no accuracy of its own
    assert math.isnan(ard["aa"]) and ard["cascade"] == "aa"
    # a failed run is a row of its own, outside every mean
    failed = frame[frame["status"].str.startswith("failed")]
    assert len(failed) == 1 and failed.iloc[0]["student"] == "cnn_tiny" and math.isnan(failed.iloc[0]["clean"])
    assert len(frame) == 6


def test_per_seed_view_has_one_row_per_run(dirs):
    a, _ = dirs
    frame = leaderboard(a, per_seed=True)
    assert len(frame) == len(RUNS_A) + 1
    one = row(frame, run_id="ard_mlp_1")
    assert one["seed"] == 1 and one["worst_case"] == pytest.approx(64.0)
    assert one["transfer_ratio"] == pytest.approx(64.0 / 75.0)
    assert one["delta_at"] == pytest.approx(64.0 - statistics.mean([55.0, 57.0]))


def test_merge_two_directories_counts_a_duplicate_once(dirs):
    a, b = dirs
    results = collect([a, b])
    assert results.duplicates == ["at_mlp_0"]
    frame = leaderboard([a, b])
    at = frame[(frame["method"] == "at") & (frame["student"] == "mlp")]
    assert len(at) == 1 and at.iloc[0]["seeds"] == 2  # the copy in suite_b is not a third seed
    akd = row(frame, method="akd")
    worst = expected(RUNS_B, "akd", "mlp", 6)
    assert akd["worst_case"] == pytest.approx(statistics.mean(worst))
    # its teacher lives in the other directory: matched by identity
    assert akd["teacher_worst_case"] == pytest.approx(75.0)
    # its at baseline too (same student, dataset and threat model)
    assert akd["delta_at"] == pytest.approx(statistics.mean(worst) - statistics.mean([55.0, 57.0]))
    assert list(frame.columns[:4]) == ["suite", "teacher", "student", "method"]  # several suites: named

    result = CliRunner().invoke(main, ["report", str(a), str(b), "--format", "csv"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and "1 run(s)" in notes[0] and "at_mlp_0" in notes[0]
    csv = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert len(csv) == len(frame)


def test_sort_where_pivot(dirs):
    a, b = dirs
    frame = leaderboard([a, b], sort="worst_case")
    values = list(frame["worst_case"].dropna())
    assert values == sorted(values, reverse=True) and frame["worst_case"].isna().iloc[-1]
    frame = leaderboard([a, b], sort="student:asc,worst_case:asc")
    assert list(frame["student"]) == sorted(frame["student"])
    mlp = frame[frame["student"] == "mlp"]["worst_case"].tolist()
    assert mlp == sorted(mlp)

    frame = leaderboard(a, where=["student=mlp", "method=ard,at"])
    assert sorted(frame["method"]) == ["ard", "at"]
    frame = leaderboard(a, where=["seed=0", "student=mlp"])  # a run column filters runs before the means
    assert row(frame, method="ard")["worst_case"] == pytest.approx(60.0) and set(frame["seeds"]) == {1}
    frame = leaderboard(a, where=["method!=natural", "seeds=2"])
    assert list(frame["method"]) == ["at"]

    pivot = leaderboard([a, b], pivot_by="method")  # failed runs have no cell
    mlp = row(pivot, student="mlp")
    assert mlp["ard"] == pytest.approx(62.0) and mlp["akd"] == pytest.approx(67.5)
    assert mlp["at"] == pytest.approx(56.0) and mlp["ard_std"] == pytest.approx(2.0)
    assert math.isnan(row(pivot, student="cnn_tiny")["ard"])  # its only ard run failed
    assert row(pivot, student="cnn_tiny")["kd"] == pytest.approx(30.0)
    text = render(pivot, "md")
    assert "| 62.00 ± 2.00 |" in text


@pytest.mark.parametrize("args, message", [
    (["--sort", "worst"], "--sort: unknown column 'worst'; did you mean 'worst_case'?"),
    (["--where", "studnet=mlp"], "--where: unknown column 'studnet'; did you mean 'student'?"),
    (["--where", "student"], "--where 'student': expected column=value"),
])
def test_bad_report_options_exit_2_with_one_line(dirs, args, message):
    a, _ = dirs
    result = CliRunner().invoke(main, ["report", str(a), *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr


def test_missing_directory_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: results directory not found: {tmp_path / 'nope'}"
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "holds no rkbench results" in result.stderr


def test_csv_columns_are_stable_and_json_has_a_schema(dirs, tmp_path):
    a, _ = dirs
    out = tmp_path / "board.csv"
    assert CliRunner().invoke(main, ["report", str(a), "--format", "csv", "--out", str(out)]).exit_code == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["teacher", "student", "method", "attack_mode", "seeds", "clean", "clean_std", "clean_lo", "clean_hi", "aa",
                      "aa_std", "aa_lo", "aa_hi", "pgd20", "pgd20_std", "pgd20_lo", "pgd20_hi", "worst_case",
                      "worst_case_std", "worst_case_lo", "worst_case_hi", "worst_class", "worst_class_std",
                      "teacher_clean", "teacher_worst_case", "transfer_ratio", "delta_at", "train_s", "params",
                      "madds", "protocol", "device", "flags", "status", "cascade", "seed_list", "run_id"]
    csv = pd.read_csv(out)
    ard = row(csv, method="ard", student="mlp")
    assert ard["worst_case_std"] == pytest.approx(2.0)
    # 3 seeds without per-example arrays: no interval is claimed (pooling the seeds' 100 shared examples as
    # 300 independent ones would claim a precision they lack; docs/seeds.md); one seed: Wilson over its 100
    assert math.isnan(ard["worst_case_lo"]) and math.isnan(ard["worst_case_hi"])
    natural = row(csv, method="natural", student="mlp")
    assert (natural["worst_case_lo"], natural["worst_case_hi"]) == (pytest.approx(5.52), pytest.approx(17.44))
    per_seed = CliRunner().invoke(main, ["report", str(a), "--format", "csv", "--per-seed"]).stdout
    assert per_seed.splitlines()[0].startswith("teacher,student,method,attack_mode,seed,clean,clean_lo,clean_hi,aa,aa_lo,aa_hi,"
                                               "pgd20,pgd20_lo,pgd20_hi,worst_case,worst_case_lo,worst_case_hi,"
                                               "worst_class,")
    document = json.loads(CliRunner().invoke(main, ["report", str(a), "--format", "json"]).stdout)
    assert document["schema_version"] == 4 and document["view"] == "aggregated"
    assert document["columns"] == header and len(document["rows"]) == 6
    ard = next(r for r in document["rows"] if r["method"] == "ard" and r["student"] == "mlp")
    assert ard["worst_case"] == 62.0 and ard["aa"] is None and ard["seeds"] == 3
    assert document["teachers"][0]["worst_case"] == 75.0


def test_markdown_renders_as_one_github_table(dirs):
    a, _ = dirs
    text = render(leaderboard(a), "md")
    note, table = text.split("\n\n")[0], text.split("\n\n")[1].splitlines()
    assert note.startswith("Training-attack protocol: eval;")  # one protocol: a line, not a column
    assert table[0].startswith("| teacher | student | method | attack_mode | seeds | clean | aa | pgd20 | worst_case |")
    assert "| protocol |" not in text
    assert re.fullmatch(r"\|(---:?\|)+", table[1])
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert len(cells) == 1  # every row has as many cells as the header
    assert "| 62.00 ± 2.00 |" in text and "| 10.0 ±6.0 |" in text and "| cascade |" in text and "Wilson interval" in text and "!zero_gradients(1/2)" in text
    assert "Integrity flags" in text


def test_write_leaderboard_is_the_report(dirs):
    a, _ = dirs
    write_leaderboard(a)
    runner = CliRunner()
    assert (a / "leaderboard.csv").read_text() == runner.invoke(main, ["report", str(a), "--format", "csv"]).stdout
    assert (a / "leaderboard.md").read_text() == runner.invoke(main, ["report", str(a)]).stdout


def test_pareto_front():
    points = [(90, 50), (95, 40), (85, 55), (80, 45), (95, 30), (85, 55)]
    # (80, 45) and (95, 30) are dominated; equal points do not dominate each other
    assert pareto_front(points) == [2, 5, 0, 1]


def test_png_plots(dirs, tmp_path):
    a, b = dirs
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--format", "png", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    for name in ("clean_vs_robust.png", "attacks_by_method.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_never_imports_torch(dirs, tmp_path):
    a, _ = dirs
    code = (f"import sys\nfrom rkbench.report import report\n"
            f"for fmt in ('md', 'csv', 'json', 'html'): report([{str(a)!r}], fmt)\n"
            f"report([{str(a)!r}], 'png', out={str(tmp_path / 'p')!r})\n"
            f"from rkbench.cli import main\n"
            f"assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _chromium_dom(page: Path, fragment: str, profile: Path) -> tuple[str, str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
               page.as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _table_column(dom: str, table_id: str, column: str) -> list[str]:
    table = re.search(rf'<table class="sortable" id="{table_id}">(.*?)</table>', dom, re.S).group(1)
    header = re.findall(r'<th data-col="([^"]+)"', table)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    index = header.index(column)
    return [re.findall(r'<td[^>]*data-v="([^"]*)"', r)[index] for r in rows]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_page_sorts_in_a_real_browser(dirs, tmp_path):
    a, b = dirs
    page = tmp_path / "board.html"
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--format", "html", "--out", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing to fetch
    frame = leaderboard([a, b])
    worst = [float(v) for v in frame["worst_case"].dropna()]

    dom, log = _chromium_dom(page, "", tmp_path / "profile0")
    assert 'data-ready="1"' in dom and not re.search(r"<html[^>]*data-errors", dom)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    assert _table_column(dom, "leaderboard", "method") == list(frame["method"])

    dom, log = _chromium_dom(page, "#sort=worst_case", tmp_path / "profile1")  # clicks the header once
    assert 'data-ready="1"' in dom and not re.search(r"<html[^>]*data-errors", dom) and "CONSOLE" not in log
    shown = [float(v) for v in _table_column(dom, "leaderboard", "worst_case") if v]
    assert shown == pytest.approx(sorted(worst, reverse=True))  # numbers: highest first
    assert _table_column(dom, "leaderboard", "worst_case")[-1] == ""  # the failed run (no value) last

    dom, _ = _chromium_dom(page, "#sort=worst_case:asc", tmp_path / "profile2")  # a second click reverses
    shown = [float(v) for v in _table_column(dom, "leaderboard", "worst_case") if v]
    assert shown == pytest.approx(sorted(worst))
    assert 'aria-sort="ascending"' in dom

    dom, _ = _chromium_dom(page, "#sort=method", tmp_path / "profile3")  # text: alphabetical
    methods = _table_column(dom, "leaderboard", "method")
    assert methods == sorted(methods, key=str.lower)


def test_mobilenetv2_madds():
    """The counter against the published MobileNetV2 figure, and rkbench's CIFAR variant recomputed
    layer by layer: 91.2M multiply-adds at 32x32, not ARD's ~187M (see rkbench/models/complexity.py:
    ARD's figure is about twice this, as FLOPs counting a multiply and an add apart would give)."""
    from torch import nn

    from rkbench.models import build_model, count_parameters
    from rkbench.models.complexity import count_madds
    from rkbench.models.mobilenetv2 import CIFAR_CONFIG

    # the rule on single layers: a grouped strided conv and a linear layer
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    assert count_madds(conv, (4, 8, 8)) == 4 * 4 * 8 * (4 // 2) * 9 + 8 * 4 * 4 * 5
    # (torchvision's ImageNet MobileNetV2 at 224x224 counts 300.8M: the paper's 300M; not run here, slow import)

    size, expected, cin = 32, 32 * 32 * 3 * 32 * 9, 32  # stem: 3x3 conv, stride 1
    for t, cout, blocks, stride in CIFAR_CONFIG:
        for s in [stride] + [1] * (blocks - 1):
            planes, out_size = t * cin, size // s
            expected += size * size * cin * planes  # 1x1 expansion
            expected += out_size * out_size * planes * 9  # 3x3 depthwise
            expected += out_size * out_size * planes * cout  # 1x1 projection
            if s == 1 and cin != cout:
                expected += size * size * cin * cout  # the 1x1 shortcut conv where the width changes
            size, cin = out_size, cout
    expected += size * size * 320 * 1280 + 1280 * 10  # last 1x1 conv, the linear head
    model = build_model("mobilenetv2", 10, (3, 32, 32))
    assert count_madds(model, (3, 32, 32)) == expected
    assert 90e6 < expected < 92e6 and count_parameters(model) == 2_296_922


def test_each_run_takes_its_own_directorys_copy_of_a_shared_teacher(dirs):
    a, b = dirs
    write_teacher(b)  # the same teacher (same identity and id), evaluated again in suite_b: other numbers
    metrics = json.loads((b / "teachers" / "teacher01" / "metrics.json").read_text())
    metrics["worst_case_accuracy"] = 0.70
    (b / "teachers" / "teacher01" / "metrics.json").write_text(json.dumps(metrics))
    frame = leaderboard([a, b])
    assert row(frame, method="akd")["teacher_worst_case"] == pytest.approx(70.0)
    assert row(frame, method="ard", student="mlp")["teacher_worst_case"] == pytest.approx(75.0)
    document = json.loads(CliRunner().invoke(main, ["report", str(a), str(b), "--format", "json"]).stdout)
    teachers = document["teachers"]
    assert sorted((t["results"], t["worst_case"]) for t in teachers) == [("suite_a", 75.0), ("suite_b", 70.0)]


def test_a_table_that_mixes_protocols_says_so_in_every_format(dirs, tmp_path):
    a, _ = dirs
    c = tmp_path / "suite_c"  # ARD again, under the official protocol (its train-mode attack)
    write_run(c, "ard_off_0", "ard", 0, "mlp", 0.90, 0.50, 0.45, True, suite="suite_c", protocol="official")
    alone = render(leaderboard(a), "md")
    assert "mixed_protocols" not in alone and "MIXED" not in alone
    text = render(leaderboard([a, c]), "md")
    assert text.startswith("MIXED training-attack protocols: eval, official (column protocol)")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert "| protocol |" in table[0] and all("!mixed_protocols" in line for line in table[2:])
    assert "`!mixed_protocols`: the table mixes training-attack protocols" in text
    csv = pd.read_csv(io.StringIO(render(leaderboard([a, c]), "csv")))
    assert set(csv["protocol"]) == {"eval", "official"} and csv["flags"].str.contains("!mixed_protocols").all()
    document = json.loads(render(leaderboard([a, c]), "json"))
    assert document["mixed_protocols"] is True and document["protocols"] == ["eval", "official"]
    page = render(leaderboard([a, c]), "html")
    assert "MIXED training-attack protocols" in page and ">protocol</th>" in page
    per_seed = leaderboard([a, c], per_seed=True, where=["protocol=official"])
    assert list(per_seed["run_id"]) == ["ard_off_0"] and "!mixed_protocols" not in per_seed["flags"].iloc[0]
