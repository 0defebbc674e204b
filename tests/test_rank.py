"""``rkbench rank``: average ranks, Friedman test and critical difference over settings, on hand-made
results; the expected statistics are computed here with scipy and Demšar's formula."""
import io
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from rkbench.cli import main
from test_stats import write_run

N = 400


def correct(accuracy: float) -> np.ndarray:
    out = np.zeros(N, bool)
    out[: round(accuracy * N)] = True
    return out


def write_settings(base, values: dict[str, list[float]], seeds=(0,)):
    """One student per setting (s0, s1, ...), teacher tA for the distillers; at is teacher-free."""
    for method, accuracies in values.items():
        for index, accuracy in enumerate(accuracies):
            for seed in seeds:
                value = accuracy + 0.01 * seed * (1 if method == "ard" else -1)
                write_run(base, f"{method}-s{index}-{seed}", method, seed, np.ones(N, bool), correct(value),
                          student=f"s{index}", teacher=None if method == "at" else "tA")


# ard best in 5 of 6 settings, at second, kd last but once above at
VALUES = {"ard": [0.70, 0.62, 0.80, 0.55, 0.66, 0.50],
          "at": [0.65, 0.60, 0.75, 0.56, 0.60, 0.40],
          "kd": [0.30, 0.20, 0.40, 0.25, 0.30, 0.45]}


def test_rank_gives_average_ranks_friedman_and_the_critical_difference(tmp_path):
    base = tmp_path / "results"
    write_settings(base, VALUES)
    result = CliRunner().invoke(main, ["rank", str(base), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout)).set_index("method")
    data = np.array([VALUES[m] for m in ("ard", "at", "kd")]).T  # settings x methods
    ranks = np.array([scipy_stats.rankdata(-row) for row in data]).mean(axis=0)
    assert table.loc[["ard", "at", "kd"], "mean_rank"].tolist() == pytest.approx(ranks.tolist(), abs=1e-4)
    assert table["rank"].tolist() == [1, 2, 3] and list(table.index) == ["ard", "at", "kd"]
    assert set(table["blocks"]) == {6}
    text = CliRunner().invoke(main, ["rank", str(base)]).stdout
    p = scipy_stats.friedmanchisquare(*data.T).pvalue
    cd = 2.343 * math.sqrt(3 * 4 / (6 * 6))  # Nemenyi, q_0.05 for 3 methods (Demšar 2006, table 5)
    assert f"Friedman test p = {p:.4g}" in text and f"CD = {cd:.3f}" in text
    assert text.startswith("| rank | method | mean_rank | mean | median | blocks |")


def test_rank_writes_the_diagram_and_an_html_section(tmp_path):
    base = tmp_path / "results"
    write_settings(base, VALUES)
    png = tmp_path / "cd.png"
    result = CliRunner().invoke(main, ["rank", str(base), "--format", "png", "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = CliRunner().invoke(main, ["report", str(base), "--format", "html"]).stdout
    assert "Ranking of the methods (worst_case)" in page and page.count("data:image/png") >= 2


def test_too_few_settings_is_one_line_exit_2_and_seeds_can_be_blocks(tmp_path):
    base = tmp_path / "results"
    write_settings(base, {m: v[:2] for m, v in VALUES.items()}, seeds=(0, 1, 2))
    result = CliRunner().invoke(main, ["rank", str(base)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "rank needs at least 3 methods in at least 5 settings" in result.stderr
    assert "found 3 method(s) in every one of 2" in result.stderr and "--per-seed" in result.stderr
    result = CliRunner().invoke(main, ["rank", str(base), "--per-seed", "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert set(table["blocks"]) == {6} and table["method"].tolist()[0] == "ard"
    two = tmp_path / "two"
    write_settings(two, {m: VALUES[m] for m in ("ard", "at")})
    result = CliRunner().invoke(main, ["rank", str(two)])
    assert result.exit_code == 2 and "found 2 method(s)" in result.stderr


def test_an_incomplete_table_drops_the_block_or_the_method_that_keeps_more_methods():
    from rkbench.report.rank import complete_table

    data = pd.DataFrame({"a": [1.0] * 6, "b": [2.0] * 6, "c": [3.0] * 6, "d": [4.0] * 5 + [math.nan]})
    table, dropped = complete_table(data)  # drop the sixth block: four methods in five blocks
    assert list(table.columns) == ["a", "b", "c", "d"] and len(table) == 5 and dropped == []
    table, dropped = complete_table(data.iloc[1:])  # only four complete blocks: drop the method instead
    assert list(table.columns) == ["a", "b", "c"] and len(table) == 5 and dropped == ["d"]
