"""Weight files, read the one way: safely (``weights_only=True``), with one clear line for a
missing file, an HTML page saved under a checkpoint's name, or a state dict that does not fit.

A neutral room: model files (``models/timm.py``) and teacher sources both use it, so no model
file reaches up into ``teachers/``.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import DataUnavailableError

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


def load_state_dict(path: Path, key: str | None = None, strip_prefix: str = "module.") -> dict:
    """Load weights safely, with one clear line for a missing file or a file that is not torch's
    (an HTML error page saved as .pt happens with model mirrors)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataUnavailableError(f"checkpoint not found: {path}")
    check_not_html(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DataUnavailableError(f"{path} is not a loadable torch checkpoint: {first}") from exc
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
