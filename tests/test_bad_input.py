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


# ----------------------------------------------------------------------------------------------
# property-based: structure-aware mutations of every shipped suite (profiles in conftest.py:
# "ci" by default, a fixed and derandomized budget; HYPOTHESIS_PROFILE=large for a long search)

import copy  # noqa: E402
import math  # noqa: E402

import yaml  # noqa: E402
from hypothesis import example, given, strategies as st  # noqa: E402

SUITES = sorted((ROOT / "suites").glob("*.yaml"))
RAW = {path.name: yaml.safe_load(path.read_text()) for path in SUITES}

# values of every wrong kind: booleans, null, huge, negative, NaN and infinities, text, nesting
ODD_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 10**30, -10**30, 1e308, math.nan, math.inf, -math.inf, "", "x",
                     [], {}, [None], {"x": 1}, "8/255", "nan", [[1]], {"name": None}]),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(-3, 3), st.none()), max_size=2),
)
MUTATIONS = ["delete", "replace", "unknown_key", "wrap_list", "wrap_mapping", "empty_container"]


def paths_of(node, prefix=()) -> list[tuple]:
    """Every path into the YAML tree (mapping keys and list indices), the root excluded."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths_of(child, (*prefix, key)))
    return found


def mutate(raw: dict, path: tuple, kind: str, value) -> dict:
    raw = copy.deepcopy(raw)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = value
    elif kind == "unknown_key":
        if isinstance(parent[key], dict):
            parent[key]["unknwn_fld"] = value
        elif isinstance(parent, dict):
            parent["unknwn_fld"] = value
        else:  # an item of a list: a list one item longer
            parent.append(value)
    elif kind == "wrap_list":
        parent[key] = [parent[key]]
    elif kind == "wrap_mapping":
        parent[key] = {"value": parent[key]}
    else:
        parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list, str)) else None
    return raw


def validate_text(tmp_path: Path, text: str | bytes, *extra: str):
    path = tmp_path / "mutated.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path, invoke("validate", path, *extra)


def assert_contract(result, path=None) -> None:
    """Exit 0 with no traceback, or exit 2 with one line ``error: ...`` that names the file."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        "".join(__import__("traceback").format_exception(*result.exc_info))
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        line = assert_one_line_error(result)
        if path is not None:
            assert str(path) in line, line


@given(name=st.sampled_from(sorted(RAW)), data=st.data())
def test_mutated_shipped_suites_validate_or_fail_in_one_line(tmp_path_factory, name, data):
    raw = RAW[name]
    path = data.draw(st.sampled_from(paths_of(raw)), label="path")
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    value = data.draw(ODD_VALUES, label="value") if kind in ("replace", "unknown_key") else None
    text = yaml.safe_dump(mutate(raw, path, kind, value), sort_keys=False)
    file, result = validate_text(tmp_path_factory.mktemp("suite"), text)
    assert_contract(result, file)


@given(content=st.one_of(st.just(b""), st.just(b"\x00\xff\xfe"), st.binary(max_size=64),
                         st.text(max_size=64).map(str.encode)))
def test_empty_binary_and_random_files_fail_in_one_line(tmp_path_factory, content):
    file, result = validate_text(tmp_path_factory.mktemp("suite"), content)
    assert_contract(result, file)
