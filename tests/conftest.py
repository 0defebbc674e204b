import contextlib
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


@contextlib.contextmanager
def registries_restored():
    """Put every registry, the loaded plugin files and RKBENCH_PLUGINS back as they were afterwards
    (plugins and tests register into the process-wide registries)."""
    from rkbench import plugins
    from rkbench.attacks import ATTACKS
    from rkbench.data import DATASETS
    from rkbench.methods import METHODS
    from rkbench.models import MODELS
    from rkbench.teachers import TEACHER_SOURCES

    registries = [METHODS, ATTACKS, MODELS, DATASETS, TEACHER_SOURCES]
    saved = [(dict(r._entries), r._plugins_loaded) for r in registries]
    loaded, env = dict(plugins._loaded), os.environ.get(plugins.ENV)
    try:
        yield
    finally:
        for registry, (entries, plugins_loaded) in zip(registries, saved):
            registry._entries.clear()
            registry._entries.update(entries)
            registry._plugins_loaded = plugins_loaded
        plugins._loaded.clear()
        plugins._loaded.update(loaded)
        if env is None:
            os.environ.pop(plugins.ENV, None)
        else:
            os.environ[plugins.ENV] = env


@pytest.fixture()
def registry_snapshot():
    """The registries as they were before the test (see ``registries_restored``)."""
    with registries_restored():
        yield


@pytest.fixture
def setup():
    """A tiny float64 student, a frozen teacher of the same shape, 5 inputs of 1x3x3, 4 classes: the
    loss tests recompute by hand on these."""
    from rkbench.models import build_model

    torch.manual_seed(0)
    student = build_model("mlp", 4, (1, 3, 3), hidden=8).double()
    teacher = build_model("mlp", 4, (1, 3, 3), hidden=8).double().eval().requires_grad_(False)
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    return student, teacher, x, y


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


def records(results: Path, kind: str = "runs") -> dict:
    """Run id -> record of every run (or teacher, ``kind="teachers"``) under ``results``, read through
    the run record's schema: a file that does not validate fails the test."""
    from rkbench.record import read_record

    out = {}
    for directory in sorted((Path(results) / kind).iterdir()):
        record, problem = read_record(directory)
        assert problem is None and record is not None, f"{directory}: {problem or 'no metrics.json'}"
        out[directory.name] = record
    return out


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


def tiny_digits_training(epochs: int = 1, **training) -> tuple[float, str]:
    """cnn_tiny trained naturally on 256 digits (training options as keywords): (last epoch's mean
    loss, sha256 of the weights). Usable in a subprocess: it needs no fixture."""
    import hashlib

    from rkbench.data import TensorDataset, load_dataset
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer

    torch.set_num_threads(1)
    data = load_dataset("digits")
    data = TensorDataset("digits", data.x_train[:256], data.y_train[:256], data.x_test[:8], data.y_test[:8], 10)
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, (1, 8, 8))
    config = TrainingConfig(epochs=epochs, batch_size=64, optimizer={"lr": 0.05}, **training)
    result = Trainer(config, torch.device("cpu")).fit(model, build_method("natural", {}, ThreatModel(eps=0.1)), data)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    return result.losses[-1], digest


# hypothesis profiles (tests/test_bad_input.py): "ci", the default, runs a fixed, derandomized budget
# (the same examples every time, well under a minute); HYPOTHESIS_PROFILE=large searches far wider
# (docs/errors.md). Failures found are kept as @example cases in the tests.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("large", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def invoke_cli(*args):
    """``rkbench ARGS`` in process (click's runner), with torch's global thread count and
    determinism put back afterwards: a run in process sets both for itself."""
    from click.testing import CliRunner

    from rkbench.cli import main

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return CliRunner().invoke(main, [str(arg) for arg in args])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
