"""Plugins: a method from a file outside the package runs in a suite and reaches the leaderboard;
entry points; bad plugins give one line and exit 2. Also the notebook API on the same run."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import rkbench
from rkbench import plugins
from rkbench.cli import main
from rkbench.errors import RkbenchError
from rkbench.registry import Registry

from conftest import records, registries_restored, tiny_suite_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_method.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """The example plugin method in a tiny suite beside at (diagnostics on), through the CLI."""
    base = tmp_path_factory.mktemp("plugin")
    suite = tiny_suite_dict(name="plugin_tiny", students=[{"name": "mlp_small", "model": "mlp", "hidden": 32}],
                            methods={"akd": {"t": 4, "alpha": 0.9}, "at": {"attack_steps": 2}})
    suite["evaluation"].update({"diagnostics": True, "diagnostics_examples": 30})
    path = base / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = base / "results"
    with registries_restored():
        result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(results), "--quiet",
                                           "--plugin", str(EXAMPLE)])
        yield results, result


def test_plugin_method_runs_in_a_suite_and_reaches_the_leaderboard(plugin_run):
    results, result = plugin_run
    assert result.exit_code == 0, result.output
    board = pd.read_csv(results / "leaderboard.csv")
    assert sorted(board["method"]) == ["akd", "at"] and (board["status"] == "finished").all()
    akd = board[board["method"] == "akd"].iloc[0]
    assert akd["teacher"] == "t_at" and 0 <= akd["worst_case"] <= akd["clean"] <= 100
    assert akd["teacher_worst_case"] > 0 and akd["transfer_ratio"] == pytest.approx(
        akd["worst_case"] / akd["teacher_worst_case"], abs=1e-3)
    at = board[board["method"] == "at"].iloc[0]
    assert akd["delta_at"] == pytest.approx(akd["worst_case"] - at["worst_case"], abs=0.011)
    assert "akd" in (results / "leaderboard.md").read_text()


def test_runner_counts_madds_and_records_diagnostics(plugin_run):
    from rkbench.models import build_model
    from rkbench.models.complexity import count_madds

    results, _ = plugin_run
    by_method = {record.method: record.model_dump(exclude_none=True) for record in records(results).values()}
    expected = count_madds(build_model("mlp", 10, (1, 8, 8), hidden=32), (1, 8, 8))
    assert expected == 64 * 32 + 32 * 32 + 32 * 10
    assert by_method["akd"]["madds"] == expected and by_method["at"]["madds"] == expected
    diagnostics = by_method["akd"]["diagnostics"]
    assert diagnostics["n_examples"] == 30
    assert -1 <= diagnostics["grad_cosine"] <= 1 and 0 <= diagnostics["adv_agreement"] <= 1
    assert 0 <= diagnostics["transfer_accuracy"] <= 1 and diagnostics["local_linearity"] >= 0
    assert "diagnostics" not in by_method["at"]  # no teacher, nothing to compare with
    frame = rkbench.leaderboard(results)
    row = frame[frame["method"] == "akd"].iloc[0]
    assert row["grad_cosine"] == pytest.approx(diagnostics["grad_cosine"])
    assert row["transfer_accuracy"] == pytest.approx(100 * diagnostics["transfer_accuracy"])
    assert pd.isna(frame[frame["method"] == "at"].iloc[0]["grad_cosine"])
    (teacher,) = records(results, "teachers").values()
    assert teacher.madds == count_madds(build_model("cnn_tiny", 10, (1, 8, 8)), (1, 8, 8))


def test_notebook_api_on_the_same_results(plugin_run):
    results, _ = plugin_run
    frame = rkbench.leaderboard(results, where=["method=akd"])
    assert isinstance(frame, pd.DataFrame) and list(frame["method"]) == ["akd"]
    assert len(rkbench.leaderboard([results], per_seed=True)) == 2
    pivot = rkbench.leaderboard(results, pivot_by="method")
    assert list(pivot.columns) == ["student", "at", "at_std", "akd", "akd_std"]
    board = rkbench.leaderboard(results)
    assert pivot.iloc[0]["akd"] == pytest.approx(board[board["method"] == "akd"].iloc[0]["worst_case"])
    run = next(p for p in (results / "runs").iterdir() if json.loads((p / "metrics.json").read_text())["method"] == "akd")
    metrics = json.loads((run / "metrics.json").read_text())
    importlib.import_module("rkbench.evaluator")  # the evaluator module, loaded: it does not shadow the API
    from rkbench.api import evaluate

    assert rkbench.evaluate is evaluate
    evaluation = rkbench.evaluate(str(run), "digits", ["pgd"], threat={"eps": 0.1},
                                  n_examples=100, cache_dir=None)
    assert evaluation.summary()["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])


def test_load_suite_and_run_suite(tmp_path, registry_snapshot):
    path = tmp_path / "suite.yaml"
    suite_dict = tiny_suite_dict(name="api_tiny", teachers=[], students=["mlp"], methods={"natural": {}},
                                 evaluation={"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}],
                                             "n_examples": 40})
    path.write_text(yaml.safe_dump(suite_dict))
    suite = rkbench.load_suite(path, ["training.seeds=[0,1]"])
    assert suite.training.seeds == [0, 1]
    outcome = rkbench.run_suite(path, tmp_path / "results", overrides=["training.seeds=[0,1]"])
    assert [o.status for o in outcome.outcomes] == ["finished", "finished"]
    again = rkbench.run_suite(suite, tmp_path / "results")
    assert [o.status for o in again.outcomes] == ["cached", "cached"]
    frame = rkbench.leaderboard(tmp_path / "results")
    assert len(frame) == 1 and frame.iloc[0]["seeds"] == 2


@pytest.mark.parametrize("content, expected", [
    (None, "error: --plugin: file not found: {path}"),
    ("raise RuntimeError('no GPU here')\n", "error: --plugin {path} (line 1): RuntimeError: no GPU here"),
    ("def broken(:\n", "error: --plugin {path} (line 1): SyntaxError: invalid syntax"),
    ("from rkbench.methods import METHODS, Method\n\n@METHODS.register('ard')\nclass Again(Method):\n    pass\n",
     "error: --plugin {path} (line 3): ValueError: method 'ard' is registered twice"),
])
def test_bad_plugin_gives_one_line_and_exit_2(tmp_path, content, expected, registry_snapshot):
    path = tmp_path / "plugin.py"
    if content is not None:
        path.write_text(content)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite_dict()))
    for command in (["validate", str(suite)], ["run", str(suite), "--dry-run"]):
        result = CliRunner().invoke(main, [*command, "--plugin", str(path)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(expected.format(path=path)), lines[0]


def test_entry_points_load_once_at_first_use(tmp_path, monkeypatch, registry_snapshot):
    """A fake installed distribution (a .dist-info on sys.path) with an object and a module entry point."""
    (tmp_path / "fake_rk_plugin.py").write_text(
        "from rkbench.methods import METHODS, Method\n"
        "class Extra(Method):\n    '''An entry-point method.'''\n"
        "@METHODS.register('ep_module_method')\nclass ModuleMethod(Method):\n    pass\n")
    info = tmp_path / "fake_rk_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-rk-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rkbench.methods]\nep_object = fake_rk_plugin:Extra\n"
                                           "ep_module = fake_rk_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loads = []
    load_entry_points = plugins.load_entry_points
    monkeypatch.setattr(plugins, "load_entry_points",
                        lambda group, registry: loads.append(group) or load_entry_points(group, registry))
    registry = Registry("method")
    assert loads == []  # nothing at construction: at first use
    assert "ep_object" in registry.names()  # an object: registered under the entry point's name
    assert registry.get("ep_object").__name__ == "Extra"
    registry.check("ep_object"), registry.describe(), "ep_object" in registry, list(registry)
    assert loads == ["rkbench.methods"]  # once, whatever is looked up afterwards
    from rkbench.methods import METHODS

    assert "ep_module_method" in METHODS._entries  # a module: registered itself by being imported
    # a broken entry point: one clear line
    (info / "entry_points.txt").write_text("[rkbench.attacks]\nbroken = fake_rk_missing_module\n")
    with pytest.raises(RkbenchError, match="plugin entry point 'broken'.*ModuleNotFoundError"):
        Registry("attack").check("pgd")


def test_plugin_files_reach_worker_processes(tmp_path, registry_snapshot):
    """--plugin puts the file in RKBENCH_PLUGINS: a process started from here registers it too."""
    rkbench.load_plugins([EXAMPLE])
    assert str(EXAMPLE.resolve()) in os.environ[plugins.ENV].split(os.pathsep)
    code = "from rkbench.methods import METHODS; print(METHODS.check('akd'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "akd", out.stderr


@pytest.mark.parametrize("page", ["README.md", "docs/plugins.md"])
def test_the_docs_show_the_example_file(page):
    import re

    text = (Path(__file__).resolve().parents[1] / page).read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class AdversarialKD" in b)
    assert block.strip() in EXAMPLE.read_text()
