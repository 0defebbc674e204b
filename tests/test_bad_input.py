"""Bad input never shows a traceback (issue 22): one line ``error: ...`` naming the file, the field
and what is expected, exit code 2. The three reproductions of the issue first, as named regression
tests; the property-based tests (hypothesis) over every input surface follow."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rkbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "suites" / "digits.yaml"


def invoke(*args: str):
    """The command in process, as a user runs it (click's runner, exceptions not caught by the test)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_one_line_error(result, *expected: str) -> str:
    """Exit 2, one line ``error: ...`` (stdout and stderr together), no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------
# the three reproductions


def test_method_mapped_to_a_boolean_is_one_line():
    """``methods: {kd: true}`` was ``TypeError: 'bool' object is not iterable`` in _methods_mapping."""
    assert_one_line_error(invoke("validate", DIGITS, "--set", "methods={kd: true}"),
                          str(DIGITS), "methods", "'kd'", "expected a mapping", "true (a boolean)")


def test_attacks_given_a_boolean_is_one_line():
    """``evaluation: {attacks: true}`` was a TypeError in _attack_entries."""
    assert_one_line_error(invoke("validate", DIGITS, "--set", "evaluation={attacks: true}"),
                          str(DIGITS), "evaluation.attacks", "expected a list of attacks")


@pytest.mark.parametrize("override, shown", [("methods.fast_ard=-1", "-1 (a number)"),
                                             ("methods.at=.nan", "nan (a number)")])
def test_method_mapped_to_a_number_is_one_line(override, shown):
    assert_one_line_error(invoke("validate", DIGITS, "--set", override),
                          str(DIGITS), "methods", "expected a mapping", shown)
