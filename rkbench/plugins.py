"""New methods, attacks, models and datasets without forking rkbench.

Two ways in, both registering with the same decorators the built-ins use
(``@METHODS.register(...)``, ``@ATTACKS.register(...)``, ``@MODELS.register(...)``,
``@DATASETS.register(...)``):

- a plugin file: ``rkbench run SUITE --plugin path/to/my_method.py`` (repeatable; also on
  ``validate``), or ``rkbench.load_plugins("my_method.py")``. The file is imported once per
  process. Its path is also put in ``RKBENCH_PLUGINS`` (os.pathsep-separated), so worker
  processes and cluster jobs started from here import it too: every registry imports the files
  listed there the first time it is used;
- an installed package's entry points, in the groups ``rkbench.methods``, ``rkbench.attacks``,
  ``rkbench.models`` and ``rkbench.datasets`` (``pyproject.toml``:
  ``[project.entry-points."rkbench.methods"] my_method = "my_package.my_method"``), loaded once,
  the first time the registry of that kind is used. An entry point naming a module registers by
  importing it; one naming an object that is not registered yet registers it under the entry
  point's name.

A missing file, or a plugin that raises while it is imported, is an ``RkbenchError``: one line
naming the file (or the entry point) and the exception, exit code 2 on the command line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from .errors import RkbenchError

ENV = "RKBENCH_PLUGINS"
_loaded: dict[str, object] = {}  # resolved path -> module


def _where(exc: BaseException, path: Path) -> str:
    """' (line N)' of the deepest frame inside the plugin file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename) == path]
    return f" (line {lines[-1]})" if lines else ""


def load_plugin_file(path: str | Path):
    """Import a plugin file once (its decorators register what it defines); returns the module."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RkbenchError(f"--plugin: file not found: {path}")
    if path.suffix != ".py":
        raise RkbenchError(f"--plugin: {path} is not a Python file (.py)")
    resolved = path.resolve()
    key = str(resolved)
    if key in _loaded:
        return _loaded[key]
    name = f"rkbench_plugin_{resolved.stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise RkbenchError(f"--plugin: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _loaded[key] = module  # before executing: a plugin that uses a registry must not load itself again
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a plugin that calls sys.exit() while imported, too
        del _loaded[key]
        sys.modules.pop(name, None)
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise RkbenchError(f"--plugin {path}{_where(exc, resolved)}: {type(exc).__name__}"
                           f"{': ' + message if message else ''}") from None
    _remember(key)
    return module


def _remember(key: str) -> None:
    listed = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    if key not in listed:
        os.environ[ENV] = os.pathsep.join([*listed, key])


def load_plugins(paths=()) -> list:
    """Import plugin files (e.g. the ``--plugin`` options); returns their modules."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [load_plugin_file(path) for path in paths]


def load_environment_plugins() -> None:
    """Import the files listed in ``RKBENCH_PLUGINS`` (set by a parent process's ``--plugin``)."""
    for path in [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]:
        if str(Path(path).resolve()) not in _loaded:
            load_plugin_file(path)


def load_entry_points(group: str, registry) -> None:
    """Load the installed entry points of ``group`` into ``registry``."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=group):
        try:
            obj = entry.load()
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else ""
            raise RkbenchError(f"plugin entry point {entry.name!r} ({entry.value}, group {group}): "
                               f"{type(exc).__name__}{': ' + message if message else ''}") from None
        if not isinstance(obj, type(sys)) and entry.name not in registry and not _registered(registry, obj):
            registry.add(entry.name, obj, source=f"entry point {entry.value}")


def _registered(registry, obj) -> bool:
    return any(item.obj is obj for item in registry._entries.values())
