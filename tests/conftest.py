import os
from pathlib import Path

import pytest
import torch

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-slice.npz"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_suite_dict(**changes) -> dict:
    """A digits suite that trains in seconds: every method of the spine, two students."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 3},
        "teachers": [{"name": "t_at", "source": "train", "model": "cnn_tiny", "method": "at",
                      "training": {"epochs": 2}}],
        "students": ["cnn_tiny", {"name": "mlp_small", "model": "mlp", "hidden": 32}],
        "methods": {"natural": {}, "kd": {"t": 4, "alpha": 0.9}, "at": {"attack_steps": 2},
                    "ard": {"t": 4, "attack_steps": 2}},
        "training": {"epochs": 1, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0]},
        "evaluation": {"attacks": [{"name": "pgd", "label": "pgd5", "steps": 5}], "n_examples": 100},
    }
    suite.update(changes)
    return suite


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): one torch
    thread is as fast for them, and far faster on a busy machine (no threads spinning per tiny op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from rkbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A naturally trained cnn_tiny on digits (about 97 % clean, not robust)."""
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer

    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, digits.input_shape)
    config = TrainingConfig(epochs=8, batch_size=64, optimizer={"lr": 0.05})
    Trainer(config, torch.device("cpu")).fit(model, build_method("natural", {}, ThreatModel(eps=0.1)), digits)
    return model.eval()


def builtin_names(registry) -> list[str]:
    """The names registered by rkbench itself (not by a test or a plugin), at collection time."""
    return [entry.name for entry in registry if getattr(entry.obj, "__module__", "").startswith("rkbench.")]


class Interrupted(Exception):
    """Raised by ``interrupt_after``: stands for a killed process."""


def interrupt_after(first: int):
    """An ``on_epoch`` callback that kills the run after epoch ``first`` (its checkpoint is written)."""

    def on_epoch(epoch, epochs, loss):
        if epoch == first:
            raise Interrupted

    return on_epoch


def scalar(output):
    """A method's loss as one tensor, whether it returned a scalar or named terms (summed as the trainer does)."""
    from rkbench.methods import total_loss

    return total_loss(output)[0]
