"""Image files to whole uint8 tensors, once: decoded with PIL, brought to one declared size, and
cached as an ``.npz`` keyed by the files (path, size, mtime) and the conversion options. The
folder sources (``imagefolder``, ``tinyimagenet``) build on this, so training keeps the
whole-dataset-on-device path whatever the source images are."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from ..errors import DataUnavailableError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
Fit = Literal["resize", "center_crop"]


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS


def labelled_files(split: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Every image under ``split/<class>/`` (recursively, sorted) with its class index."""
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = split / name
        found = sorted(p for p in folder.rglob("*") if is_image(p)) if folder.is_dir() else []
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataUnavailableError(f"no images under {split} (extensions: {', '.join(EXTENSIONS)})")
    return files, labels


def decode(paths: list[Path], size: int, fit: Fit, mode: str) -> np.ndarray:
    """``[N, C, size, size]`` uint8. ``resize``: the whole image scaled to size x size;
    ``center_crop``: the shorter side scaled to ``size``, then the central square."""
    from PIL import Image

    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if fit == "center_crop":
                    scale = size / min(image.size)
                    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
                    image = image.resize((width, height), Image.BILINEAR)
                    left, top = (width - size) // 2, (height - size) // 2
                    image = image.crop((left, top, left + size, top + size))
                elif image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except OSError as exc:  # PIL.UnidentifiedImageError is an OSError
            raise DataUnavailableError(f"{path} is not a readable image ({type(exc).__name__})") from exc
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def fingerprint(files: list[Path], options: dict) -> str:
    """A key that changes when a file is added, removed, renamed, rewritten, or an option changes."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_arrays(cache_dir: Path, stem: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict:
    """``build()``'s arrays, from ``<cache_dir>/<stem>-<key>.npz`` when it is there (read without
    pickle); else built and written atomically. An unreadable cache file is rebuilt."""
    path = cache_dir.expanduser() / f"{stem}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}
        except Exception:  # damaged or foreign (zip, format, missing array): built again
            pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except OSError:  # a read-only cache directory: the data are still usable, just not cached
        pass
    return arrays
