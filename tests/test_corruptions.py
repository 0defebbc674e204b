"""Common corruptions (rkbench/corruptions.py): the real files in RobustBench's layout read through
robustbench's loader, generated sets (seeded, cached as uint8, keyed into the record), the skip
line, the record field and the reports (mean column, --per-corruption)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rkbench import store
from rkbench.api import run_suite
from rkbench.cli import main
from rkbench.corruptions import CORRUPTIONS, corrupted_set, key_of
from rkbench.errors import ConfigError, RkbenchError
from rkbench.record import read_record
from rkbench.suite import suite_from_dict

from conftest import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**changes) -> dict:
    return {"names": ["fog"], "severities": [2, 5], "files": None, "data_dir": "data", **changes}


def test_reads_a_small_file_in_robustbenchs_cifar10c_layout(tmp_path):
    """<data_dir>/CIFAR-10-C/{labels,fog}.npy, 5 x 10000 images (4x4 here to stay small): severity s is
    rows (s-1)*10000 .. s*10000, images NHWC uint8; robustbench's loader gives the first n of each."""
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    labels = (np.arange(10_000) * 7 % 10).astype(np.uint8)
    fog = np.zeros((50_000, 4, 4, 3), np.uint8)
    fog[:, 0, 0, 0] = np.arange(50_000) // 10_000 * 40 + 1  # 1, 41, 81, 121, 161 by severity
    fog[:, 1, 2, 1] = np.arange(50_000) % 200  # the image's position within its severity
    np.save(root / "labels.npy", labels)
    np.save(root / "fog.npy", fog)
    x, y = np.zeros((6, 3, 4, 4), np.float32), labels[:6].astype(np.int64)
    lines = []
    made = corrupted_set(config(names=["fog", "snow"], files="cifar10", data_dir=str(tmp_path)), x, y,
                         tmp_path / "cache", lines.append)
    assert made.source == "files" and sorted(made.images) == [("fog", 2), ("fog", 5)]
    assert made.skipped == {"snow": f"{root / 'snow.npy'} is missing"}
    assert lines == [f"corruption snow skipped: {root / 'snow.npy'} is missing"]
    for severity in (2, 5):
        images = made.images[("fog", severity)]
        assert images.shape == (6, 3, 4, 4) and images.dtype == np.uint8  # NCHW, as the models take it
        assert (images[:, 0, 0, 0] == (severity - 1) * 40 + 1).all() and list(images[:, 1, 1, 2]) == list(range(6))
    assert list(made.labels) == list(labels[:6])


def test_generated_sets_are_seeded_cached_and_skip_what_cannot_be_made(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 32, 32)).astype(np.float32)
    y = np.arange(3)
    lines = []
    made = corrupted_set(config(names=["gaussian_noise", "fog"]), x, y, tmp_path, lines.append)
    assert made.source == "generated" and not made.skipped and not lines
    assert {k: v.shape for k, v in made.images.items()} == {(n, s): (3, 3, 32, 32) for n in ("gaussian_noise", "fog")
                                                            for s in (2, 5)}
    noisy = made.images[("gaussian_noise", 5)].astype(int) - np.rint(x * 255)
    assert noisy.std() > 10  # severity 5 noise, not the image back
    assert len(list(tmp_path.glob("corruptions-*.npz"))) == 1
    import rkbench.corruptions as corruptions

    monkeypatch.setattr(corruptions, "generate", lambda *a, **k: pytest.fail("regenerated instead of read back"))
    again = corrupted_set(config(names=["gaussian_noise", "fog"]), x, y, tmp_path)
    assert all((again.images[k] == made.images[k]).all() for k in made.images)
    monkeypatch.undo()
    fresh = corrupted_set(config(names=["gaussian_noise", "fog"]), x, y, tmp_path / "other")  # seeded: the same
    assert all((fresh.images[k] == made.images[k]).all() for k in made.images)
    # a different test set is a different key
    assert key_of(config(), x, y)[0] != key_of(config(), x[:2], y[:2])[0]
    small = rng.random((2, 1, 8, 8)).astype(np.float32)  # digits' size: imagecorruptions needs 32x32
    with pytest.raises(RkbenchError, match=r"no corruption could be made for these images \(8x8\): fog: .*32 pixels"):
        corrupted_set(config(), small, np.arange(2), tmp_path, lines.append)
    assert lines == ["corruption fog skipped: AttributeError: Image width and height must be at least 32 pixels"]


def test_an_unknown_corruption_is_one_line():
    raw = tiny_suite_dict(evaluation={"corruptions": {"names": ["fogg"]}})
    with pytest.raises(ConfigError, match="unknown corruption 'fogg'; did you mean 'fog'"):
        suite_from_dict(raw)


def test_a_suite_with_corruptions_records_them_and_reports_them(tmp_path):
    """A 32x32 npz dataset; two corruptions x two severities; the mean column and --per-corruption."""
    rng = np.random.default_rng(1)
    data = tmp_path / "tiny32.npz"
    np.savez(data, x_train=rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), y_train=rng.integers(0, 3, 64),
             x_test=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), y_test=rng.integers(0, 3, 16))
    raw = tiny_suite_dict(dataset={"name": "npz", "path": str(data), "augment": "none"}, teachers=[],
                          students=[{"name": "mlp_small", "model": "mlp", "hidden": 8}], methods={"natural": {}},
                          evaluation={"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}], "n_examples": 16,
                                      "corruptions": {"names": ["contrast", "pixelate"], "severities": [1, 5]}})
    results = tmp_path / "results"
    assert not run_suite(raw, results).failed
    (run_dir,) = (results / store.RUNS).iterdir()
    record = read_record(run_dir)[0]
    assert record.corruptions.source == "generated" and record.corruptions.n_examples == 16
    assert set(record.corruptions.accuracy) == {"contrast", "pixelate"}
    values = [a for per in record.corruptions.accuracy.values() for a in per]
    assert len(values) == 4 and record.corruptions.mean == pytest.approx(np.mean(values))
    assert json.loads((run_dir / store.METRICS).read_text())["record_version"] == 3
    table = CliRunner().invoke(main, ["report", str(results), "--format", "csv"])
    assert table.exit_code == 0 and "corruptions" in table.output.splitlines()[0].split(",")
    per = CliRunner().invoke(main, ["report", str(results), "--per-corruption", "--format", "csv"])
    assert per.exit_code == 0, per.output
    header, line = per.output.splitlines()[:2]
    assert header.split(",")[-3:] == ["corruptions", "contrast", "pixelate"]
    cells = dict(zip(header.split(","), line.split(",")))
    assert float(cells["contrast"]) == pytest.approx(100 * np.mean(record.corruptions.accuracy["contrast"]))
    # evaluated again with the same set: current, nothing recomputed
    assert [o.status for o in run_suite(raw, results).outcomes] == ["cached"]


def test_per_corruption_without_corruptions_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--per-corruption"])
    assert result.exit_code == 2 and result.output.startswith("error: ")
