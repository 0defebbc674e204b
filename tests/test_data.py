import numpy as np
import pytest
import torch

from rkbench.data import load_dataset
from rkbench.data.augment import random_crop_flip
from rkbench.errors import DataUnavailableError

from conftest import SHARED_CIFAR


def test_digits_split_shapes_ranges_and_strata(digits):
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert 0.0 == digits.x_train.min() and digits.x_train.max() == 1.0
    assert digits.num_classes == 10
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: ~45 per class
    again = load_dataset("digits")
    assert torch.equal(again.x_test, digits.x_test)  # the split is fixed


def test_npz_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8), "y_train": np.arange(20) % 5,
              "x_test": rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), "y_test": np.arange(6) % 5}
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_dataset("npz", {"path": str(tmp_path / "d.npz")})
    assert data.num_classes == 5 and data.x_train.shape == (20, 3, 4, 4)
    assert torch.allclose(data.x_test * 255, torch.from_numpy(arrays["x_test"]).float())
    with pytest.raises(DataUnavailableError, match="not found"):
        load_dataset("npz", {"path": str(tmp_path / "missing.npz")})
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(DataUnavailableError, match="lacks array"):
        load_dataset("npz", {"path": str(tmp_path / "partial.npz")})


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="shared CIFAR-10 slice absent")
def test_npz_shared_cifar10_slice():
    data = load_dataset("npz", {"path": str(SHARED_CIFAR)})
    assert data.x_train.shape == (4660, 3, 32, 32) and data.x_test.shape == (932, 3, 32, 32)
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert data.num_classes == 10 and data.augment == "crop_flip"
    assert data.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_cifar_offline_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="cifar10 not found under .*download=true"):
        load_dataset("cifar10", {"root": str(tmp_path)})


def test_batched_crop_flip_moves_pixels_within_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, generator=generator)
    assert out.shape == x.shape
    for image, source in zip(out, x):
        values = set(image[image > 0].tolist())
        assert values <= set(source.flatten().tolist())  # only shifted/flipped originals or zero padding
    # with no padding, the only change is a horizontal flip
    flipped = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    for image, source in zip(flipped, x):
        assert torch.equal(image, source) or torch.equal(image, source.flip(-1))
