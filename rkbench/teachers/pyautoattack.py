"""The CIFAR-10 ResNet-18 shipped inside the pyautoattack wheel, as an offline teacher.

``pyautoattack/examples/model_test.pt`` is a state dict for the ResNet-18 of
``pyautoattack/examples/resnet.py`` (inputs in [0, 1], no normalization layer). It is naturally
trained, not robust: about 93.6 % clean and about 0 % under PGD-20 at eps 8/255 on CIFAR-10,
the "non-robust teacher" row of the ARD paper. Needs no network and no option:

```yaml
teachers:
  - {name: aa_resnet18, source: pyautoattack}
```
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..errors import ConfigError, DataUnavailableError
from ..weights import file_sha256, fit_weights, load_state_dict
from .base import TEACHER_SOURCES, TeacherParams, TeacherSource
from .hooked import PenultimateFeatures

WEIGHTS = "model_test.pt"
ARCHITECTURE = "resnet.py"


class PyAutoAttackParams(TeacherParams):
    pass


def examples_dir() -> Path:
    """``<site-packages>/pyautoattack/examples``, found without importing pyautoattack."""
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("the pyautoattack package is not installed: pip install pyautoattack")
    return Path(list(spec.submodule_search_locations)[0]) / "examples"


def weights_path() -> Path:
    path = examples_dir() / WEIGHTS
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing: this pyautoattack install does not ship its example "
                                   f"CIFAR-10 ResNet-18 (reinstall pyautoattack from PyPI)")
    return path


def example_resnet18():
    """A fresh ``ResNet18()`` from pyautoattack's ``examples/resnet.py`` (a file, not a package)."""
    name = "rkbench_pyautoattack_example_resnet"
    module = sys.modules.get(name)
    if module is None:
        path = examples_dir() / ARCHITECTURE
        if not path.is_file():
            raise DataUnavailableError(f"{path} is missing (reinstall pyautoattack from PyPI)")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module.ResNet18()


@TEACHER_SOURCES.register("pyautoattack", description="the CIFAR-10 ResNet-18 shipped in the pyautoattack wheel "
                          "(non-robust, ~93.6 % clean; offline)", source="pyautoattack examples/model_test.pt")
class PyAutoAttack(TeacherSource):
    Params = PyAutoAttackParams

    def identity(self, params: PyAutoAttackParams) -> dict:
        return {"file": f"pyautoattack/examples/{WEIGHTS}", "sha256": file_sha256(weights_path())}

    def model_label(self, params: PyAutoAttackParams) -> str:
        return "pyautoattack ResNet-18"

    def build(self, params: PyAutoAttackParams, context) -> PenultimateFeatures:
        data = context.dataset
        if data.num_classes != 10 or tuple(data.input_shape) != (3, 32, 32):
            raise ConfigError(f"the pyautoattack teacher is a CIFAR-10 model (10 classes, 3x32x32); the suite's "
                              f"dataset {data.name!r} has {data.num_classes} classes of shape {tuple(data.input_shape)}")
        model = example_resnet18()
        path = weights_path()
        fit_weights(model, load_state_dict(path), path, "pyautoattack's ResNet-18")
        return PenultimateFeatures(model.eval(), head="linear")
