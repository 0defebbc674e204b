"""Intervals, paired tests and sample-size planning: the numbers against scipy.stats, and the
report, compare and validate commands on hand-made per-example arrays."""
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from rkbench.cli import main
from rkbench.record import RunRecord, write_record
from rkbench.report import compare_report, report
from rkbench.report.stats import (detectable_difference, holm, mcnemar_p, paired, paired_difference_interval, verdict,
                                  wilson)

THREAT = {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 10}
N = 400
LABELS = np.arange(N) % 4  # four classes of 100 examples


# ----------------------------------------------------------------------------------------------
# the statistics against scipy


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (3, 10), (10, 10), (360, 450), (449, 450), (7, 1000), (5000, 10000)])
def test_wilson_equals_scipy(k, n):
    for level in (0.95, 0.99):
        expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert wilson(k, n, alpha=1 - level) == (pytest.approx(expected.low, abs=1e-12),
                                                 pytest.approx(expected.high, abs=1e-12))


@pytest.mark.parametrize("b,c", [(0, 1), (3, 10), (20, 5), (7, 7), (100, 130), (2500, 2600), (0, 40)])
def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs(b, c):
    assert mcnemar_p(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_identical_runs_give_p_1_and_a_clearly_different_pair_p_below_001():
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.7
    same = paired([(base, base)])
    assert same.p == 1.0 and same.delta == 0.0
    assert same.interval[0] < 0 < same.interval[1] and same.interval[1] - same.interval[0] < 0.02
    better = base.copy()
    better[np.flatnonzero(~base)[:40]] = True  # 40 more examples right, none lost
    result = paired([(better, base)])
    assert (result.b, result.c) == (40, 0) and result.delta == pytest.approx(0.1)
    assert result.p < 0.01 and result.p == pytest.approx(scipy_stats.binomtest(40, 40).pvalue)


def test_seeds_are_pooled_as_strata():
    rng = np.random.default_rng(1)
    pairs = [(rng.random(N) < 0.75, rng.random(N) < 0.7) for _ in range(3)]
    b = sum(int((x & ~y).sum()) for x, y in pairs)
    c = sum(int((~x & y).sum()) for x, y in pairs)
    result = paired(pairs)
    assert (result.b, result.c, result.n, result.seeds) == (b, c, 3 * N, 3)
    assert result.p == pytest.approx(scipy_stats.binomtest(b, b + c).pvalue, rel=1e-9)


@pytest.mark.parametrize("a,b,c,d", [(300, 3, 10, 137), (300, 20, 5, 125), (0, 0, 0, 450), (410, 40, 0, 0),
                                     (200, 0, 0, 250), (59, 6, 16, 80), (1, 1, 7, 12)])
def test_paired_interval_is_newcombes_hybrid_score_from_scipys_wilson_intervals(a, b, c, d):
    n = a + b + c + d
    lo, hi = paired_difference_interval(a, b, c, d)
    p1, p2 = (a + b) / n, (a + c) / n
    w1 = scipy_stats.binomtest(a + b, n).proportion_ci(method="wilson")
    w2 = scipy_stats.binomtest(a + c, n).proportion_ci(method="wilson")
    cross = a * d - b * c  # the correlation's numerator, shrunk by n/2 when positive (Newcombe 1998)
    cross = max(cross - n / 2, 0) if cross >= 0 else cross
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = cross / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max((p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2, 0))
    above = math.sqrt(max((w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2, 0))
    assert (lo, hi) == (pytest.approx(max(-1, p1 - p2 - below), abs=1e-12), pytest.approx(min(1, p1 - p2 + above),
                                                                                            abs=1e-12))
    assert lo <= (b - c) / n <= hi


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, covered, runs = 300, 0, 2000
    # each example: both right 0.6, only the first 0.1, only the second 0.05, neither 0.25 -> true delta 0.05
    cells = rng.multinomial(n, [0.6, 0.1, 0.05, 0.25], size=runs)
    for a, b, c, d in cells:
        lo, hi = paired_difference_interval(int(a), int(b), int(c), int(d))
        covered += lo <= 0.05 <= hi
    assert 0.93 <= covered / runs <= 0.975


def test_holm_on_hand_made_p_values():
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, math.nan, 0.001]) == [pytest.approx(0.2), pytest.approx(math.nan, nan_ok=True),
                                            pytest.approx(0.002)]
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    assert [verdict(d, p) for d, p in [(2.0, 0.01), (-2.0, 0.01), (2.0, 0.2)]] == ["better", "worse", "within noise"]


def test_detectable_difference_solves_connors_formula_and_has_about_the_power_asked():
    n, rate = 450, 0.10
    delta = detectable_difference(n, rate)
    za, zb = scipy_stats.norm.ppf(0.975), scipy_stats.norm.ppf(0.8)
    assert (za * math.sqrt(rate) + zb * math.sqrt(rate - delta ** 2)) ** 2 / delta ** 2 == pytest.approx(n, rel=1e-6)
    # the exact test's power at that difference (summed over the number of discordant examples)
    q = (rate + delta) / (2 * rate)  # P(a discordant example favours the better model)
    power = 0.0
    for m in range(1, n + 1):
        weight = scipy_stats.binom.pmf(m, n, rate)
        if weight < 1e-12:
            continue
        reject = [k for k in range(m + 1) if mcnemar_p(k, m - k) < 0.05]
        power += weight * scipy_stats.binom.pmf(reject, m, q).sum()
    assert 0.7 < power < 0.85
    assert detectable_difference(10000, 0.05) < detectable_difference(450, 0.05)
    assert math.isnan(detectable_difference(10, 0.01))  # 10 examples can detect nothing at 1 % discordance


# ----------------------------------------------------------------------------------------------
# result directories with per-example arrays


def write_run(base: Path, run_id: str, method: str, seed: int, clean: np.ndarray, pgd: np.ndarray,
              student: str = "mlp", teacher: str | None = None, threat=THREAT, labels=LABELS, n_examples=None):
    directory = base / "runs" / run_id
    directory.mkdir(parents=True)
    worst = clean & pgd
    write_record(directory, RunRecord(
        run_id=run_id, teacher=teacher or "-", student=student, method=method, seed=seed, model=student,
        status="finished", train_seconds=1.0, parameters=100, n_examples=n_examples or len(clean),
        clean_accuracy=float(clean.mean()), robust_accuracy={"pgd20": float(pgd.mean())},
        worst_case_accuracy=float(worst.mean()), threat=threat, flags=[]))
    identity = {"dataset": {"name": "digits", "options": {}}, "threat": threat,
                "teacher": {"name": teacher} if teacher else None, "student": {"model": student},
                "method": {"name": method, "params": {}}, "seed": seed}
    (directory / "config.json").write_text(json.dumps({"run_id": run_id, "identity": identity, "suite": "toy"}))
    arrays = {"clean": clean, "pgd20": pgd, "pgd20__evaluated": np.ones(len(clean), bool)}
    if labels is not None:
        arrays["__labels"] = labels
    np.savez(directory / "per_example.npz", **arrays)
    return directory


def flip(mask: np.ndarray, gain: int, loss: int, rng) -> np.ndarray:
    """A copy with ``gain`` wrong examples made right and ``loss`` right ones made wrong."""
    out = mask.copy()
    out[rng.choice(np.flatnonzero(~mask), gain, replace=False)] = True
    out[rng.choice(np.flatnonzero(mask), loss, replace=False)] = False
    return out


@pytest.fixture()
def toy(tmp_path):
    """mlp: at (2 seeds), ard clearly better (+40 examples), kd within noise (+3 / -2), both distilled
    from teacher tA; rslad worse; per class: ard loses class 3 entirely."""
    rng = np.random.default_rng(0)
    base = tmp_path / "toy"
    clean = np.ones(N, bool)
    runs = {}
    for seed in (0, 1):
        at = rng.random(N) < 0.6
        runs[("at", seed)] = at
        write_run(base, f"at{seed}", "at", seed, clean, at)
        ard = flip(at, 40, 0, rng)
        write_run(base, f"ard{seed}", "ard", seed, clean, ard, teacher="tA")
        runs[("kd", seed)] = flip(at, 3, 2, rng)
        write_run(base, f"kd{seed}", "kd", seed, clean, runs[("kd", seed)], teacher="tA")
        write_run(base, f"rslad{seed}", "rslad", seed, clean, flip(at, 0, 30, rng), teacher="tA")
        runs[("ard", seed)] = ard
    return base, runs


def rows_by_method(frame: pd.DataFrame) -> dict:
    return {row["method"]: row for _, row in frame.iterrows()}


def test_report_baseline_marks_better_worse_within_noise(toy):
    base, runs = toy
    text, frame, _ = report(base, "md", baseline="at")
    rows = rows_by_method(frame)
    assert rows["at"]["verdict"] == "baseline" and rows["at"]["delta"] == 0.0
    assert rows["ard"]["verdict"] == "better" and rows["ard"]["delta"] == pytest.approx(100 * 80 / 800)
    assert rows["rslad"]["verdict"] == "worse"
    assert rows["kd"]["verdict"] == "within noise" and rows["kd"]["delta"] == pytest.approx(100 * 2 / 800)
    # two seeds a side: the method level (two-level bootstrap); p_holm: Holm over the three rows compared
    assert {rows[m]["level"] for m in ("ard", "kd", "rslad")} == {"method"}
    ps = [rows[m]["p"] for m in ("ard", "kd", "rslad")]
    assert [rows[m]["p_holm"] for m in ("ard", "kd", "rslad")] == pytest.approx(holm(ps))
    assert rows["ard"]["delta_lo"] > 0 and rows["kd"]["delta_lo"] < 0 < rows["kd"]["delta_hi"]
    assert rows["ard"]["prob_improvement"] == 1.0 and rows["rslad"]["prob_improvement"] == 0.0
    assert "| within noise |" in text and "| better |" in text and "Holm" in text and "2000 resamples" in text
    # one seed a side (seed 0 only): the model level, p the exact McNemar test
    _, frame, _ = report(base, "md", baseline="at", where=["seed=0"])
    rows = rows_by_method(frame)
    assert {rows[m]["level"] for m in ("ard", "kd", "rslad")} == {"model"}
    assert rows["ard"]["p"] == pytest.approx(scipy_stats.binomtest(40, 40).pvalue)
    discordant = int((runs[("at", 0)] != runs[("kd", 0)]).sum())
    gained = int((runs[("kd", 0)] & ~runs[("at", 0)]).sum())
    assert rows["kd"]["p"] == pytest.approx(scipy_stats.binomtest(gained, discordant).pvalue)
    assert math.isnan(rows["ard"]["prob_improvement"])
    csv_text, _, _ = report(base, "csv", baseline="at")
    csv = pd.read_csv(io.StringIO(csv_text))
    assert {"seeds", "level", "delta", "delta_lo", "delta_hi", "prob_improvement", "p", "p_holm",
            "verdict"} <= set(csv.columns)
    assert set(csv["verdict"]) == {"baseline", "better", "worse", "within noise"}
    document = json.loads(report(base, "json", baseline="at")[0])
    assert document["baseline"]["label"] == "at" and "bootstrap" in document["baseline"]["method_test"]
    assert document["baseline"]["resamples"] == 2000
    assert {r["method"]: r["verdict"] for r in document["rows"]}["kd"] == "within noise"


def test_report_baseline_per_seed_and_metric_and_teacher_label(toy):
    base, runs = toy
    _, frame, _ = report(base, "md", baseline="at", per_seed=True, metric="clean")
    assert set(frame["verdict"]) == {"baseline", "within noise"}  # every clean array is all-correct: p = 1
    assert frame[frame["verdict"] == "within noise"]["p"].eq(1.0).all()
    _, frame, _ = report(base, "md", baseline="tA/kd")
    rows = rows_by_method(frame)
    # a baseline named with its teacher serves every row of the student, teacher-free ones too
    assert rows["kd"]["verdict"] == "baseline" and rows["at"]["verdict"] == "within noise"
    assert rows["ard"]["verdict"] == "better"


@pytest.mark.parametrize("args,message", [
    (["--baseline", "att"], "--baseline 'att': no finished run of that method; methods: ard, at, kd, rslad"),
    (["--baseline", "at", "--metric", "pgd1000"], "--metric 'pgd1000'"),
    (["--baseline", "at", "--pivot", "method"], "--baseline works on the leaderboard itself"),
])
def test_report_baseline_bad_input_is_one_line_exit_2(toy, args, message):
    base, _ = toy
    result = CliRunner().invoke(main, ["report", str(base), *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_baseline_on_other_examples_is_an_error(toy):
    base, runs = toy
    short = np.ones(N - 50, bool)
    # natural on 350 examples: the same student (dataset, threat, model) as the at runs, other examples
    write_run(base, "nat0", "natural", 0, short, short, labels=LABELS[:N - 50])
    result = CliRunner().invoke(main, ["report", str(base), "--baseline", "at"])
    assert result.exit_code == 2
    assert "not evaluated on the same examples (350 vs 400 examples)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_compare_run_directories_and_labels(toy):
    base, runs = toy
    text, frame = compare_report([str(base / "runs" / "at0"), str(base / "runs" / "ard0")])
    assert list(frame["metric"]) == ["clean", "pgd20", "worst_case"]
    worst = frame.set_index("metric").loc["worst_case"]
    assert worst["delta"] == pytest.approx(10.0) and worst["verdict"] == "better" and worst["seeds"] == 1
    assert frame.set_index("metric").loc["clean", "verdict"] == "within noise"
    assert "| within noise |" in text
    # labels inside a results directory: every seed, paired seed by seed
    result = CliRunner().invoke(main, ["compare", "mlp/at", "mlp/kd", "mlp/tA/ard", "--results-dir", str(base),
                                       "--format", "csv", "--metric", "worst_case"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table["compared"]) == ["mlp/kd", "mlp/tA/ard"] and set(table["seeds"]) == {2}
    assert list(table["verdict"]) == ["within noise", "better"] and set(table["level"]) == {"method"}
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p"].tolist()), abs=1e-5)  # the CSV rounds p


@pytest.mark.parametrize("change,message", [
    ("examples", "were not evaluated on the same examples (300 vs 400 examples)"),
    ("labels", "were not evaluated on the same examples (their labels differ)"),
    ("threat", "differ in threat model"),
])
def test_compare_mismatch_is_one_line_exit_2(toy, change, message):
    base, runs = toy
    other = base / "other"
    kwargs = {}
    if change == "examples":
        clean, pgd, kwargs = np.ones(300, bool), runs[("at", 0)][:300], {"labels": LABELS[:300]}
    else:
        clean, pgd = np.ones(N, bool), runs[("at", 0)]
        kwargs = {"labels": LABELS[::-1].copy()} if change == "labels" else {"threat": {**THREAT, "eps": 0.2}}
    write_run(other, "x0", "ard", 0, clean, pgd, **kwargs)
    result = CliRunner().invoke(main, ["compare", str(base / "runs" / "at0"), str(other / "runs" / "x0")])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["mlp/at", "mlp/ard"], "give --results-dir DIR"),
    (["mlp/at", "mlp/nope", "--results-dir", "{base}"], "mlp/nope: no finished run of that student and method"),
    (["mlp/at"], "at least two runs"),
])
def test_compare_bad_names_are_one_line_exit_2(toy, args, message):
    base, _ = toy
    result = CliRunner().invoke(main, ["compare", *[a.format(base=base) for a in args]])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_worst_class_and_per_class_table(toy):
    base, runs = toy
    _, frame, _ = report(base, "md")
    rows = rows_by_method(frame)
    at = [runs[("at", s)] for s in (0, 1)]
    per_seed_worst = [min(100 * a[LABELS == c].mean() for c in range(4)) for a in at]
    assert rows["at"]["worst_class"] == pytest.approx(np.mean(per_seed_worst))
    text, table, _ = report(base, "md", per_class=True)
    at_row = table[table["method"] == "at"].iloc[0]
    for c in range(4):  # the seeds' examples pooled per class
        assert at_row[str(c)] == pytest.approx(100 * np.mean([a[LABELS == c].mean() for a in at]))
    assert at_row["worst_class"] == pytest.approx(min(at_row[str(c)] for c in range(4)))
    assert text.splitlines()[0].endswith("| 0 | 1 | 2 | 3 | worst_class | worst_class_label |")
    result = CliRunner().invoke(main, ["report", str(base), "--per-class", "--format", "csv"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith(
        "teacher,student,method,seeds,worst_case,0,1,2,3,worst_class")


def test_runs_without_labels_have_no_worst_class(tmp_path):
    base = tmp_path / "old"
    write_run(base, "at0", "at", 0, np.ones(N, bool), np.ones(N, bool), labels=None)
    _, frame, _ = report(base, "md")
    assert math.isnan(frame.iloc[0]["worst_class"])
    result = CliRunner().invoke(main, ["report", str(base), "--per-class"])
    assert result.exit_code == 2 and "no run has its labels stored" in result.stderr


def test_validate_prints_the_detectable_difference():
    result = CliRunner().invoke(main, ["validate", "suites/digits.yaml", "--set", "evaluation.n_examples=450"])
    assert result.exit_code == 0, result.output
    expected = 100 * detectable_difference(450, 0.10)
    assert f"{expected:.1f} points if 10 % are discordant" in " ".join(result.output.split())
    assert "±3.7 points" in result.output  # 95 % interval at 80 % accuracy on 450 examples


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_page_filters_highlights_and_embeds_plots_in_a_real_browser(toy, tmp_path):
    import re

    from test_report import _chromium_dom

    base, runs = toy
    for seed in (0, 1):  # a second student, more robust than every mlp row
        write_run(base, f"tiny_at{seed}", "at", seed, np.ones(N, bool), flip(runs[("at", seed)], 100, 0,
                                                                               np.random.default_rng(seed)),
                  student="cnn_tiny")
    page = tmp_path / "board.html"
    result = CliRunner().invoke(main, ["report", str(base), "--format", "html", "--baseline", "at", "--out", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing to fetch
    assert len(re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,iVBORw0KGgo', text)) == 2

    def rows(dom):
        """(student, method, visible, classes of the worst_case cell, verdict, hover) per body row."""
        table = re.search(r'<table class="sortable" id="leaderboard">(.*?)</table>', dom, re.S).group(1)
        header = re.findall(r'<th data-col="([^"]+)"', table)
        out = []
        for attrs, body in re.findall(r"<tr([^>]*)>(.*?)</tr>", table.split("<tbody>")[1], re.S):
            cells = re.findall(r"<td([^>]*)>(.*?)</td>", body, re.S)
            worst_attrs = cells[header.index("worst_case")][0]
            out.append((re.search(r'data-student="([^"]*)"', attrs).group(1),
                        re.sub(r"<[^>]+>", "", cells[header.index("method")][1]),
                        "display: none" not in attrs, re.search(r'class="([^"]*)"', worst_attrs).group(1),
                        re.sub(r"<[^>]+>", "", cells[header.index("verdict")][1]),
                        re.search(r'title="([^"]*)"', worst_attrs).group(1), 'class="noise"' in attrs))
        return out

    dom, log = _chromium_dom(page, "", tmp_path / "profile0")
    assert 'data-ready="1"' in dom and not re.search(r"<html[^>]*data-errors", dom) and "CONSOLE" not in log
    shown = rows(dom)
    best = [(student, method) for student, method, visible, classes, *_ in shown if "best" in classes.split()]
    assert best == [("cnn_tiny", "at")]  # the highest worst case of all rows
    kd = next(r for r in shown if r[1] == "kd")
    assert kd[4] == "within noise" and kd[6]  # greyed row
    assert kd[5].startswith("95 % Wilson interval: ") and "(800 examples)" in kd[5]

    dom, log = _chromium_dom(page, "#student=mlp", tmp_path / "profile1")  # the filter, set from the link
    assert not re.search(r"<html[^>]*data-errors", dom) and "CONSOLE" not in log
    shown = rows(dom)
    assert {r[0] for r in shown if r[2]} == {"mlp"} and any(not r[2] for r in shown)
    best = [(student, method) for student, method, visible, classes, *_ in shown if "best" in classes.split()]
    assert best == [("mlp", "ard")]  # recomputed over the rows shown

    dom, _ = _chromium_dom(page, "#student=mlp&teacher=tA&sort=worst_case:asc", tmp_path / "profile2")
    shown = [r for r in rows(dom) if r[2]]
    assert [r[1] for r in shown] == ["rslad", "kd", "ard"]


def test_paired_reports_never_import_torch(toy, tmp_path):
    import subprocess
    import sys

    base, _ = toy
    code = (f"import sys\nfrom rkbench.report import compare_report, report\n"
            f"report([{str(base)!r}], 'html', baseline='at')\nreport([{str(base)!r}], 'md', per_class=True)\n"
            f"compare_report(['mlp/at', 'mlp/ard'], {str(base)!r})\n"
            f"assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
