"""Bad input never shows a traceback (issue 22): one line ``error: ...`` naming the file, the field
and what is expected, exit code 2. The three reproductions of the issue first, as named regression
tests; the property-based tests (hypothesis) over every input surface follow."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import invoke_cli
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
from hypothesis import example, given, settings, strategies as st  # noqa: E402


def budget(n: int):
    """``n`` examples under the "ci" profile (60 a test), scaled with the loaded profile's budget
    (HYPOTHESIS_PROFILE=large: 2000 a test, so ``n * 2000 / 60``)."""
    return settings(max_examples=max(1, n * settings().max_examples // 60))

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


@budget(40)
@given(name=st.sampled_from(sorted(RAW)), data=st.data())
def test_mutated_shipped_suites_validate_or_fail_in_one_line(tmp_path_factory, name, data):
    raw = RAW[name]
    path = data.draw(st.sampled_from(paths_of(raw)), label="path")
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    value = data.draw(ODD_VALUES, label="value") if kind in ("replace", "unknown_key") else None
    text = yaml.safe_dump(mutate(raw, path, kind, value), sort_keys=False)
    file, result = validate_text(tmp_path_factory.mktemp("suite"), text)
    assert_contract(result, file)


@budget(15)
@given(content=st.one_of(st.just(b""), st.just(b"\x00\xff\xfe"), st.binary(max_size=64),
                         st.text(max_size=64).map(str.encode)))
def test_empty_binary_and_random_files_fail_in_one_line(tmp_path_factory, content):
    file, result = validate_text(tmp_path_factory.mktemp("suite"), content)
    assert_contract(result, file)


# ----------------------------------------------------------------------------------------------
# --set strings

KEYS = st.lists(st.one_of(st.sampled_from(["training", "epochs", "methods", "kd", "t", "students", "0", "1", "99",
                                           "evaluation", "attacks", "threat", "eps", "teachers", "name", "", "-1"]),
                          st.text(max_size=4)), min_size=1, max_size=4).map(".".join)
VALUES = st.one_of(st.sampled_from(["", "[", "{", "]", "{a: [}", ".nan", "-.inf", "1e400", "-5", "null", "true",
                                    "!!python/object:os.system", "&a [*a]", "8/255", "'", "a: b: c", "\t", "@x"]),
                   st.text(max_size=12))


@budget(30)
@example(item="training.epochs=[")  # was a yaml ParserError traceback
@example(item="training.epochs=!!python/object:os.system")
@given(item=st.one_of(st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES), st.text(max_size=20)))
def test_set_strings_apply_or_fail_in_one_line(item):
    result = invoke("validate", DIGITS, "--set", item)
    assert_contract(result)
    if result.exit_code:
        assert "--set" in result.output or str(DIGITS) in result.output, result.output


# ----------------------------------------------------------------------------------------------
# plugin files that raise while imported, or register something broken

from conftest import registries_restored  # noqa: E402

RAISES = ["raise {exc}({message!r})", "import not_a_module_anywhere_{n}", "def f(:\n    pass",
          "x = 1 / 0", "raise SystemExit({n})", "{{}}['{message}']", "import sys\nsys.exit('{message}')"]
BROKEN = {  # registers something broken, and the suite then names it
    "methods": [
        "from rkbench.methods import METHODS\nMETHODS.register('brk')({n})",
        "from rkbench.methods import METHODS, Method\n@METHODS.register('brk')\nclass M(Method):\n    Params = {n}\n"
        "    def loss(self, student, batch):\n        return 0",
        "from rkbench.methods import METHODS, Method\nfrom pydantic import BaseModel, field_validator\n"
        "class P(BaseModel):\n    t: int = 1\n    @field_validator('t', mode='before')\n    @classmethod\n"
        "    def _t(cls, value):\n        raise {exc}({message!r})\n"
        "@METHODS.register('brk')\nclass M(Method):\n    Params = P\n    def loss(self, student, batch):\n"
        "        return 0",
    ],
    "attacks": [
        "from rkbench.attacks import ATTACKS\nfrom rkbench.attacks.pgd import PGD\n@ATTACKS.register('brk')\n"
        "class A(PGD):\n    defaults = {n}",
        "from rkbench.attacks import ATTACKS\nfrom rkbench.attacks.pgd import PGD\n@ATTACKS.register('brk')\n"
        "class A(PGD):\n    Params = None",
    ],
    "students": [
        "from rkbench.models import MODELS\nMODELS.register('brk')(print)",
        "from rkbench.models import MODELS\ndef m(num_classes, in_channels, image_size):\n    raise {exc}('x')\n"
        "m.check_options = lambda options: 1 / 0\nMODELS.register('brk')(m)",
    ],
    "dataset": [
        "from rkbench.data import DATASETS\nfrom rkbench.data.digits import Digits\n@DATASETS.register('brk')\n"
        "class D(Digits):\n    Params = {n}",
    ],
}
EXCEPTIONS = st.sampled_from(["ValueError", "TypeError", "RuntimeError", "KeyError", "ImportError", "AttributeError",
                              "OSError", "Exception", "NotImplementedError", "RecursionError"])
NAMES_IT = {"methods": ["methods={brk: {}}"], "attacks": ["evaluation.attacks=[brk]"],
            "students": ["students=[brk]"], "dataset": ["dataset=brk"]}


def plugin_case(tmp_path: Path, source: str, *overrides: str):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(source)
    with registries_restored():
        result = invoke("validate", DIGITS, "--plugin", plugin, *[arg for o in overrides for arg in ("--set", o)])
    return plugin, result


@budget(12)
@given(template=st.sampled_from(RAISES), exc=EXCEPTIONS, message=st.text(max_size=12), n=st.integers(-3, 300))
def test_plugins_that_raise_on_import_fail_in_one_line(tmp_path_factory, template, exc, message, n):
    source = template.format(exc=exc, message=message, n=n)
    plugin, result = plugin_case(tmp_path_factory.mktemp("plugin"), source)
    assert_contract(result)
    assert result.exit_code == 2 and str(plugin) in result.output, result.output


@budget(15)
@given(kind=st.sampled_from(sorted(BROKEN)), data=st.data(), exc=EXCEPTIONS, message=st.text(max_size=12),
       n=st.sampled_from(["3", "None", "dict", "int", "'x'", "[1]", "object"]))
def test_plugins_that_register_something_broken_fail_in_one_line(tmp_path_factory, kind, data, exc, message, n):
    source = data.draw(st.sampled_from(BROKEN[kind])).format(exc=exc, message=message, n=n)
    plugin, result = plugin_case(tmp_path_factory.mktemp("plugin"), source, *NAMES_IT[kind])
    assert_contract(result)


# ----------------------------------------------------------------------------------------------
# results files, truncated, garbled or of the wrong type, read by report, compare, status and by
# resume in run

import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

from rkbench.suite import expand, suite_from_dict  # noqa: E402

RESULTS_SUITE = {
    "name": "bad_input",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "teachers": [{"name": "t", "source": "train", "model": "mlp", "model_options": {"hidden": 16}, "method": "natural",
                  "training": {"epochs": 1}}],
    "students": [{"name": "mlp", "model": "mlp", "hidden": 16}],
    "methods": {"natural": {}, "kd": {"t": 4}, "at": {"attack_steps": 1}},
    "training": {"epochs": 1, "batch_size": 256, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}], "n_examples": 40},
    "references": [{"student": "mlp", "method": "at", "paper": "a paper", "table": "Table 1", "clean": 90.0,
                    "pgd20": 40.0}],
}


def cli_run(suite_file: Path, results: Path, *extra: str):
    return invoke_cli("run", suite_file, "--results-dir", results, "--quiet", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real results directory: a trained teacher, three finished runs, references.json."""
    base = tmp_path_factory.mktemp("finished")
    suite_file = base / "bad_input.yaml"
    suite_file.write_text(yaml.safe_dump(RESULTS_SUITE, sort_keys=False))
    results = base / "results"
    result = cli_run(suite_file, results)
    assert result.exit_code == 0, result.output
    runs = {run.method.label: run.run_id for run in expand(suite_from_dict(RESULTS_SUITE))[1]}
    return suite_file, results, runs


def targets(results: Path) -> list[str]:
    """The files a reader or a resume reads, relative to the results directory."""
    names = (("metrics.json", "config.json", "per_example.npz"))
    found = [str(p.relative_to(results)) for p in sorted(results.glob("*/*/*")) if p.name in names]
    return found + ["references.json"]


def json_of_wrong_type():
    return st.one_of(st.sampled_from([[], 3, "x", None, True, {}, [{}], {"run_id": 3}, {"status": "finished"}]),
                     st.dictionaries(st.text(max_size=5), ODD_VALUES, max_size=3))


@st.composite
def damaged_file(draw, results: Path, names: list[str]):
    """(relative path, new bytes or None to put a directory in its place)."""
    name = draw(st.sampled_from(names), label="file")
    original = (results / name).read_bytes()
    how = draw(st.sampled_from(["truncate", "garble", "wrong_type", "field", "empty", "directory"]), label="how")
    if how == "truncate":
        return name, original[:draw(st.integers(0, max(0, len(original) - 1)))]
    if how == "garble":
        at = draw(st.integers(0, max(0, len(original) - 1)))
        junk = draw(st.binary(min_size=1, max_size=8))
        return name, original[:at] + junk + original[at + len(junk):]
    if how == "empty":
        return name, b""
    if how == "directory":
        return name, None
    if how == "field" and name.endswith(".json"):
        document = json.loads(original)
        if isinstance(document, dict) and document:
            key = draw(st.sampled_from(sorted(document)), label="field")
            document[key] = draw(ODD_VALUES, label="value")
            return name, json.dumps(document).encode()
    return name, json.dumps(draw(json_of_wrong_type(), label="json")).encode()


def damaged_copy(results: Path, target: Path, name: str, content: bytes | None) -> Path:
    shutil.copytree(results, target)
    path = target / name
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return target


def digest(results: Path) -> dict:
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file()}


def assert_reader_contract(result) -> None:
    """Exit 0, or one ``error:`` line and exit 2; warnings about a skipped file may come first."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        "".join(__import__("traceback").format_exception(*result.exc_info))
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if not line.startswith(("warning:", "note:"))]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def check_readers(copy_: Path, runs: dict) -> None:
    before = digest(copy_)
    for args in (["report", copy_], ["report", copy_, "--format", "json", "--against-paper"],
                 ["report", copy_, "--baseline", "natural"],
                 ["compare", copy_ / "runs" / runs["natural"], copy_ / "runs" / runs["at"]],
                 ["compare", "mlp/natural", "mlp/at", "--results-dir", copy_],
                 ["status", copy_], ["status", copy_, "--json"]):
        assert_reader_contract(invoke(*args))
    assert digest(copy_) == before  # readers never write


def check_resume(suite_file: Path, copy_: Path, runs: dict, name: str) -> None:
    damaged_run = Path(name).parts[1] if name.startswith(("runs", "teachers")) else None
    kept = {run_id: (copy_ / "runs" / run_id / "metrics.json").read_bytes()
            for run_id in runs.values() if run_id != damaged_run}
    result = cli_run(suite_file, copy_)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        "".join(__import__("traceback").format_exception(*result.exc_info))
    assert "Traceback" not in result.output and result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2:  # after the header line: a damaged file the run cannot go on with, named
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
        assert str(copy_) in errors[0], result.output
    for run_id, text in kept.items():  # the other runs' results are there, unchanged
        assert (copy_ / "runs" / run_id / "metrics.json").read_bytes() == text


@budget(20)
@given(data=st.data())
def test_damaged_results_files_are_read_or_refused_in_one_line(finished, tmp_path_factory, data):
    _, results, runs = finished
    name, content = data.draw(damaged_file(results, targets(results)))
    check_readers(damaged_copy(results, tmp_path_factory.mktemp("damaged") / "results", name, content), runs)


@budget(12)
@given(data=st.data())
def test_resume_over_damaged_results_files_loses_nothing(finished, tmp_path_factory, data):
    suite_file, results, runs = finished
    name, content = data.draw(damaged_file(results, targets(results)))
    check_resume(suite_file, damaged_copy(results, tmp_path_factory.mktemp("damaged") / "results", name, content),
                 runs, name)


# failures the search found, kept as cases of their own (hypothesis's "ci" profile has no database)
FOUND = [
    ("runs/{natural}/config.json", b"3"),  # report: AttributeError 'int' object has no attribute 'get'
    ("runs/{at}/config.json", b'{"identity": {"method": 1}}'),
    ("runs/{natural}/metrics.json", None),  # run: IsADirectoryError writing the failed record over it
    ("references.json", None),  # run: IsADirectoryError writing the references
    ("runs/{natural}/config.json", b'{"suite": [[1]], "identity": {}}'),  # leaderboard: unhashable type 'list'
    ("runs/{natural}/config.json", b'{"suite": true, "identity": {}}'),  # report title: expected str, bool found
]


@pytest.mark.parametrize("name, content", FOUND)
def test_found_damage_is_read_resumed_or_refused_in_one_line(finished, tmp_path, name, content):
    suite_file, results, runs = finished
    name = name.format(**runs)
    check_readers(damaged_copy(results, tmp_path / "readers", name, content), runs)
    check_resume(suite_file, damaged_copy(results, tmp_path / "resume", name, content), runs, name)


@budget(5)
@given(content=st.one_of(st.binary(max_size=64), st.sampled_from(["list", "dict", "epoch", "truncated"])))
def test_a_damaged_checkpoint_trains_from_epoch_0_with_one_warning(finished, tmp_path_factory, content):
    """A run with a damaged checkpoint.pt (no metrics.json yet): trained again from epoch 0, finished."""
    suite_file, results, runs = finished
    copy_ = tmp_path_factory.mktemp("checkpoint") / "results"
    shutil.copytree(results, copy_)
    run = copy_ / "runs" / runs["at"]
    for name in ("metrics.json", "model.safetensors", "model.json", "per_example.npz"):
        (run / name).unlink(missing_ok=True)
    if isinstance(content, bytes):
        (run / "checkpoint.pt").write_bytes(content)
    else:
        state = {"list": [1, 2], "dict": {"model": 3}, "epoch": {"epoch": "x", "losses": None}}.get(content, {})
        torch.save(state, run / "checkpoint.pt")
        if content == "truncated":
            torch.save({"epoch": 1, "model": torch.zeros(1000)}, run / "checkpoint.pt")
            (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:300])
    result = cli_run(suite_file, copy_)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "ignored checkpoint" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
