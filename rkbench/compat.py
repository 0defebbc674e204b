"""Make third-party packages importable as PyPI installs them.

RobustBench (PyPI ``robustbench``) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``, but AutoAttack installs from PyPI as
``pyautoattack``; and it imports ``pkg_resources``, which setuptools 81 removed (rkbench declares
``setuptools<81``). ``import_robustbench()`` is the one place that imports robustbench: every
caller in rkbench goes through it.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import warnings
from types import ModuleType

from .errors import RkbenchError

ALIAS = "autoattack"
REAL = "pyautoattack"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def alias_autoattack() -> bool:
    """Register ``autoattack`` (and ``autoattack.<sub>``) in ``sys.modules`` as pyautoattack's own
    module objects, unless a real ``autoattack`` is importable. Returns True when it aliased."""
    current = sys.modules.get(ALIAS)
    if current is not None:
        return getattr(current, "__name__", "") == REAL
    if _importable(ALIAS):
        return False  # a real AutoAttack (e.g. the GitHub install) wins
    if not _importable(REAL):
        raise RkbenchError("robustbench needs AutoAttack: pip install pyautoattack")
    package = importlib.import_module(REAL)
    sys.modules[ALIAS] = package
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("utils_tf"):  # TensorFlow helpers: importing them needs tensorflow
            continue
        try:
            module = importlib.import_module(f"{REAL}.{info.name}")
        except ImportError:
            continue
        sys.modules[f"{ALIAS}.{info.name}"] = module
    return True


def require_pkg_resources() -> None:
    if sys.modules.get("pkg_resources") is not None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pkg_resources is deprecated" on every import
            importlib.import_module("pkg_resources")
    except ImportError:
        raise RkbenchError("robustbench imports pkg_resources, which setuptools 81 removed: "
                           "pip install 'setuptools<81'") from None


def import_robustbench() -> ModuleType:
    """``import robustbench`` (with ``robustbench.utils`` and ``robustbench.model_zoo`` loaded)
    after making its imports resolvable; one clear line when something is missing."""
    if "robustbench.utils" in sys.modules and "robustbench.model_zoo" in sys.modules:
        return sys.modules["robustbench"]
    if not _importable("robustbench"):
        raise RkbenchError("the robustbench package is not installed: pip install robustbench")
    require_pkg_resources()
    alias_autoattack()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecations from its dependencies at import time
            module = importlib.import_module("robustbench")
            importlib.import_module("robustbench.utils")
            importlib.import_module("robustbench.model_zoo")
    except ImportError as exc:
        raise RkbenchError(f"robustbench could not be imported: {exc}".splitlines()[0]) from exc
    return module


def import_imagecorruptions() -> ModuleType:
    """``imagecorruptions`` (1.1.2, the last release) with two shims for today's stack, applied to its
    module only: ``fog`` uses ``np.float_`` (removed in NumPy 2) and ``glass_blur`` passes
    ``multichannel`` to ``skimage.filters.gaussian`` (removed in scikit-image 0.21; now ``channel_axis``)."""
    import numpy

    if not _importable("imagecorruptions"):
        raise RkbenchError("generating common corruptions needs imagecorruptions: pip install 'rkbench[corruptions]'")
    require_pkg_resources()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its pkg_resources import warns on every import
        package = importlib.import_module("imagecorruptions")
        corruptions = importlib.import_module("imagecorruptions.corruptions")
    if getattr(corruptions, "_rkbench_shimmed", False):
        return package

    class NumpyWithFloat(ModuleType):
        float_ = numpy.float64

        def __getattr__(self, name):
            return getattr(numpy, name)

    original = corruptions.gaussian

    def gaussian(image, sigma=1, multichannel=None, **options):
        if multichannel is not None:
            options["channel_axis"] = -1 if multichannel else None
        return original(image, sigma=sigma, **options)

    corruptions.np = NumpyWithFloat("numpy")
    corruptions.gaussian = gaussian
    corruptions._rkbench_shimmed = True
    return package
