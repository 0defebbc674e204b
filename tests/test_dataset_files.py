"""The file-based dataset sources on tiny generated fixtures (no download): imagefolder (PNG/JPEG,
resize or center crop, the uint8 cache), SVHN (.mat in torchvision's layout) and Tiny ImageNet
(the tiny-imagenet-200 layout with val_annotations.txt); one line naming a missing path; an
imagefolder suite end to end through the command line."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from rkbench.cli import main
from rkbench.data import DATASETS, load_dataset
from rkbench.errors import DataUnavailableError

from conftest import records

pytestmark = pytest.mark.usefixtures("one_thread")

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def write_image(path: Path, color, size=(10, 12), noise=0, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = color
    if noise:
        jitter = np.random.default_rng(seed).integers(-noise, noise + 1, pixels.shape)
        pixels = np.clip(pixels.astype(int) + jitter, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def image_folder(root: Path, per_class=(3, 2), size=(10, 12), noise=0) -> Path:
    """``root/{train,val}/<class>/`` with one solid colour per class, PNG and JPEG mixed."""
    for split, count in zip(("train", "val"), per_class):
        for label, color in enumerate(COLORS):
            for i in range(count):
                suffix = ".png" if i % 2 == 0 else ".jpg"
                write_image(root / split / f"class_{label}" / f"{i}{suffix}", color, size, noise, seed=i + 97 * label)
    return root


def test_the_new_sources_are_listed():
    result = CliRunner().invoke(main, ["list", "datasets"])
    assert result.exit_code == 0
    for name in ("imagefolder", "svhn", "tinyimagenet"):
        assert name in DATASETS and name in result.output


def test_imagefolder_resizes_labels_by_sorted_class_folder_and_caches(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "shapes")
    options = {"root": str(root), "size": 8, "cache_dir": str(tmp_path / "cache")}
    data = load_dataset("imagefolder", options)
    assert data.x_train.shape == (9, 3, 8, 8) and data.x_test.shape == (6, 3, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.num_classes == 3
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and data.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    # a solid PNG stays that colour after resizing (JPEG is lossy: close)
    assert torch.equal(data.x_train[0], torch.tensor(COLORS[0]).float().div(255).view(3, 1, 1).expand(3, 8, 8))
    assert (data.x_train[1] - torch.tensor(COLORS[0]).float().div(255).view(3, 1, 1)).abs().max() < 0.1
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as arrays:
        assert arrays["x_train"].dtype == np.uint8

    import rkbench.data.imagefolder as module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(module, "decode", no_decoding)
    again = load_dataset("imagefolder", options)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    monkeypatch.undo()
    write_image(root / "train" / "class_1" / "new.png", COLORS[1])  # a changed folder: a new key, decoded
    changed = load_dataset("imagefolder", options)
    assert changed.x_train.shape[0] == 10 and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_imagefolder_center_crop_keeps_the_middle_and_grayscale_has_one_channel(tmp_path):
    path = tmp_path / "wide" / "train" / "a" / "0.png"
    path.parent.mkdir(parents=True)
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, 4:12] = 255  # a white middle square between black bands
    Image.fromarray(pixels, mode="L").save(path)
    (tmp_path / "wide" / "val" / "a").mkdir(parents=True)
    Image.fromarray(pixels, mode="L").save(tmp_path / "wide" / "val" / "a" / "0.png")
    common = {"root": str(tmp_path / "wide"), "size": 8, "mode": "L", "cache_dir": str(tmp_path / "cache")}
    cropped = load_dataset("imagefolder", {**common, "fit": "center_crop"})
    assert cropped.x_train.shape == (1, 1, 8, 8) and torch.all(cropped.x_train == 1.0)
    squeezed = load_dataset("imagefolder", {**common, "fit": "resize"})
    assert squeezed.x_train[0, 0, :, 0].max() < 0.5 and squeezed.x_train[0, 0, :, 4].min() > 0.5


@pytest.mark.parametrize("broken, needle", [
    (lambda root: None, "image folder not found: {root}/train"),
    (lambda root: image_folder(root).joinpath("val", "class_9").mkdir(), "class folder(s) not in"),
])
def test_imagefolder_problems_are_one_line_naming_the_path(tmp_path, broken, needle):
    root = tmp_path / "pics"
    broken(root)
    with pytest.raises(DataUnavailableError) as error:
        load_dataset("imagefolder", {"root": str(root), "size": 8, "cache_dir": str(tmp_path / "cache")})
    message = str(error.value)
    assert needle.format(root=root) in message and "\n" not in message


def svhn_files(root: Path, n_train=5, n_test=3) -> Path:
    import scipy.io

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # torchvision's layout: H, W, C, N
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10, 10 = digit 0
        scipy.io.savemat(root / name, {"X": x, "y": y})
    return root


def test_svhn_reads_torchvisions_mat_files(tmp_path):
    import scipy.io

    root = svhn_files(tmp_path / "svhn", n_train=12)
    data = load_dataset("svhn", {"root": str(root)})
    raw = scipy.io.loadmat(root / "train_32x32.mat")
    assert data.x_train.shape == (12, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32) and data.num_classes == 10
    assert data.y_train.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # label 10 is the digit 0
    n, c, h, w = 4, 2, 5, 7
    assert data.x_train[n, c, h, w].item() == pytest.approx(raw["X"][h, w, c, n] / 255.0)
    assert data.augment == "none"


def test_svhn_missing_file_is_one_line_with_the_download_hint(tmp_path):
    with pytest.raises(DataUnavailableError) as error:
        load_dataset("svhn", {"root": str(tmp_path / "nowhere")})
    assert str(error.value) == (f"SVHN file not found: {tmp_path / 'nowhere' / 'train_32x32.mat'} "
                                f"(set dataset.download=true to fetch it)")


def tiny_imagenet(root: Path) -> Path:
    """The tiny-imagenet-200 layout with three classes (wnids.txt deliberately unsorted)."""
    wnids = ["n03000000", "n01000000", "n02000000"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = dict(zip(sorted(wnids), COLORS))
    for wnid in wnids:
        for i in range(2):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colors[wnid], size=(64, 64))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate(["n02000000", "n03000000", "n01000000", "n02000000"]):
        write_image(root / "val" / "images" / f"val_{i}.JPEG", colors[wnid], size=(64, 64))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tinyimagenet_labels_val_by_its_annotations(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny-imagenet-200")
    data = load_dataset("tinyimagenet", {"root": str(root), "cache_dir": str(tmp_path / "cache")})
    assert data.x_train.shape == (6, 3, 64, 64) and data.num_classes == 3
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2]  # sorted wnids
    assert data.y_test.tolist() == [1, 2, 0, 1]
    for x, y in zip(data.x_test, data.y_test):  # each image carries its class's colour
        assert (x.mean((1, 2)) - torch.tensor(COLORS[y]).float().div(255)).abs().max() < 0.05
    small = load_dataset("tinyimagenet", {"root": str(root), "size": 32, "cache_dir": str(tmp_path / "cache")})
    assert small.x_test.shape == (4, 3, 32, 32)


def test_tinyimagenet_missing_annotations_is_one_line_naming_the_file(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny-imagenet-200")
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataUnavailableError) as error:
        load_dataset("tinyimagenet", {"root": str(root), "cache_dir": str(tmp_path / "cache")})
    assert str(error.value).startswith(f"Tiny ImageNet file not found: {root / 'val' / 'val_annotations.txt'} ")


def test_a_missing_dataset_path_fails_the_run_with_one_line_naming_it(tmp_path):
    """As for npz and CIFAR: the runs that need the dataset are recorded as failed with the reason."""
    suite = {"name": "gone", "dataset": {"name": "imagefolder", "root": str(tmp_path / "gone"), "size": 8},
             "students": ["cnn_tiny"], "methods": {"natural": {}}}
    path = tmp_path / "gone.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(tmp_path / "results"), "--quiet"])
    line = f"DataUnavailableError: image folder not found: {tmp_path / 'gone' / 'train'}"
    assert result.exit_code == 1 and f"failed: {line}\n" in result.output
    (metrics,) = (tmp_path / "results" / "runs").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["error"] == line


def test_an_imagefolder_suite_runs_end_to_end(tmp_path):
    """Done when: an imagefolder suite runs end to end on a generated folder of images."""
    root = image_folder(tmp_path / "colours", per_class=(20, 10), size=(8, 8), noise=40)
    suite = {
        "name": "colours",
        "dataset": {"name": "imagefolder", "root": str(root), "size": 8, "cache_dir": str(tmp_path / "cache")},
        "threat": {"norm": "linf", "eps": 0.03, "step_size": 0.01, "steps": 2},
        "students": ["cnn_tiny"],
        "methods": {"natural": {}, "at": {"attack_steps": 2}},
        "training": {"epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.05}, "seeds": [0]},
        "evaluation": {"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3}]},
    }
    path = tmp_path / "colours.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(tmp_path / "results"), "--quiet"])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert result.exit_code == 0, result.output
    metrics = [record.model_dump() for record in records(tmp_path / "results").values()]
    assert len(metrics) == 2 and all(m["status"] == "finished" and m["n_examples"] == 30 for m in metrics)
    assert max(m["clean_accuracy"] for m in metrics) > 0.6  # three colours are learnable; chance is 1/3
    board = (tmp_path / "results" / "leaderboard.csv").read_text()
    assert "natural" in board and "at" in board
