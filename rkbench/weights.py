"""Weight files, read the one way: safely, with one clear line for a missing file, an HTML page
saved under a checkpoint's name, or a state dict that does not fit. A ``.safetensors`` file is read
by safetensors (a JSON header and raw tensor bytes: nothing is unpickled); any other file by
``torch.load(weights_only=True)``. rkbench writes its students and in-suite teachers with
``save_model``: ``model.safetensors`` beside a small JSON config saying how to rebuild the network.

A neutral room: model files (``models/timm.py``) and teacher sources both use it, so no model
file reaches up into ``teachers/``.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import DataUnavailableError
from .store import atomic_write

MODEL_FORMAT = "rkbench-model"  # the ``format`` of a model config (model.json, an export's config.json)
MODEL_FORMAT_VERSION = 1
METADATA_KEY = "rkbench_config"  # the model config, also inside the safetensors header

_SHA256_CACHE: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) within a process (zoo files reach 1 GB)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def file_digest(path: Path) -> str:
    """The sha256 of a weights file for run identities, or "missing" (validation works before placing it)."""
    path = Path(path).expanduser()
    return file_sha256(path) if path.is_file() else "missing"


def check_not_html(path: Path) -> None:
    """One clear line for an HTML/XML page saved under a checkpoint's name (model mirrors and
    Google Drive answer quota or login pages with status 200)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        raise DataUnavailableError(f"{path} is an HTML/XML page, not a torch checkpoint (a failed download?); "
                                   f"delete it and fetch the file again")


def model_config(model: nn.Module, architecture: str, options: dict, num_classes: int,
                 input_shape) -> dict:
    """What rebuilds ``model`` around its weights: the registered architecture and its options, the
    number of classes, the input size, and where normalization happens (inside the model, on
    pixels in [0, 1], with the mean and std it holds; or nowhere)."""
    if getattr(model, "normalize", False) and hasattr(model, "mean"):
        normalization = {"where": "inside the model", "mean": model.mean.flatten().tolist(),
                         "std": model.std.flatten().tolist()}
    else:
        normalization = {"where": "none"}
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "architecture": architecture,
            "options": dict(options or {}), "num_classes": int(num_classes),
            "input_shape": [int(d) for d in input_shape], "input_range": [0.0, 1.0],
            "normalization": normalization}


def save_model(model: nn.Module, path: Path, config: dict) -> None:
    """``model``'s weights as safetensors at ``path`` (the config in its header too), written atomically.
    Every tensor is copied contiguous (tied weights are saved once per name, loaded strictly)."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt", METADATA_KEY: json.dumps(config, sort_keys=True)})
    atomic_write(Path(path), lambda handle: handle.write(data), mode="wb")


def safetensors_config(path: Path) -> dict | None:
    """The model config in a safetensors file's header (read without loading the tensors), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise DataUnavailableError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from exc
    return json.loads(text) if text else None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError: one line, never a traceback
        raise DataUnavailableError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from exc


def load_state_dict(path: Path, key: str | None = None, strip_prefix: str = "module.") -> dict:
    """Load weights safely, with one clear line for a missing file or a file that is not torch's
    (an HTML error page saved as .pt happens with model mirrors). ``.safetensors`` files are read
    by safetensors, which never unpickles; others with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataUnavailableError(f"checkpoint not found: {path}")
    check_not_html(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
            raise DataUnavailableError(f"{path} is not a loadable torch checkpoint: {_first_line(exc)}") from exc
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise DataUnavailableError(f"{path} has no entry {key!r}")
        state = state[key]
    elif isinstance(state, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise DataUnavailableError(f"{path} holds a {type(state).__name__}, not a state dict")
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    return state


def fit_weights(model: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    """``model.load_state_dict(state)`` (strict), a mismatch reported as one line:
    ``<path> does not fit <what>: <torch's first line>``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataUnavailableError(f"{path} does not fit {what}: {str(exc).splitlines()[0]}") from exc
    return model
