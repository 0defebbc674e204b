"""Common corruptions (Hendrycks & Dietterich, ICLR 2019): the 15 corruptions x 5 severities of
CIFAR-10-C / CIFAR-100-C, RobustBench's third threat model, as an evaluation beside the attacks.

Where the corrupted images come from, in this order:

- **the real files**, when ``files`` names the set (``cifar10`` or ``cifar100``) and
  ``<data_dir>/CIFAR-10-C/labels.npy`` (or ``CIFAR-100-C``) is there in RobustBench's layout (one
  ``<corruption>.npy`` of 5 x 10000 uint8 images per corruption): read through robustbench's own
  loader (``load_corruptions_cifar``), the first ``n`` images of each severity. They correspond to
  the first ``n`` images of the CIFAR test set in its original order;
- **else generated** from the evaluation's own test images with ``imagecorruptions`` (the
  maintained packaging of the ImageNet-C code; its parameters are ImageNet-C's, so at 32x32 a
  severity is not CIFAR-10-C's severity: numbers from generated sets are comparable with each
  other, not with RobustBench's CIFAR-10-C leaderboard). Each image's noise is seeded by its
  position, corruption and severity. A corruption that cannot be generated at the dataset's image
  size (imagecorruptions needs 32x32 at least) is skipped with one line.

Either way the set is cached as uint8 (``<cache>/corruptions-<key>.npz``); ``key`` hashes the
configuration, the test images and the generator's version, and it is written into every record
evaluated on the set: a record is current only for the same key.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import store
from .errors import RkbenchError

# RobustBench's (and CIFAR-10-C's) 15 corruptions, in imagecorruptions' order
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
FILE_SETS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
IMAGES_PER_SEVERITY = 10_000  # RobustBench's layout: severity s is rows (s-1)*10000 .. s*10000


@dataclass
class CorruptedSet:
    """uint8 images [n, C, H, W] per (corruption, severity), their labels, and where they came from."""

    key: str
    source: str  # "files" (CIFAR-10-C / CIFAR-100-C read through robustbench) or "generated"
    images: dict[tuple[str, int], np.ndarray]
    labels: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)  # corruption -> why it was skipped


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (float) as uint8 (what CIFAR-10-C stores)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def real_files(data_dir: str | Path | None, files: str | None) -> Path | None:
    """The directory of the real corruption files, when the suite names a set and it is there."""
    if not files or data_dir is None:
        return None
    directory = Path(data_dir).expanduser() / FILE_SETS[files]
    return directory if (directory / "labels.npy").is_file() else None


def set_key(config: dict, x: np.ndarray, y: np.ndarray, real: Path | None) -> str:
    """What the corrupted set depends on: the configuration, the test images (or the real files'
    sizes and dates), and imagecorruptions' version."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True).encode())
    if real is None:
        from importlib.metadata import version

        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
        digest.update(f"imagecorruptions {version('imagecorruptions')}".encode())
    else:
        for name in ["labels", *config["names"]]:
            path = real / f"{name}.npy"
            stat = path.stat() if path.is_file() else None
            digest.update(f"{name}:{stat.st_size if stat else None}:{stat.st_mtime_ns if stat else None}".encode())
    return digest.hexdigest()[:16]


def key_of(config: dict, x: np.ndarray, y: np.ndarray) -> tuple[str, Path | None]:
    """The set's key (what records name) and the real files' directory, if they are used."""
    real = real_files(config.get("data_dir"), config.get("files"))
    identity = {k: config.get(k) for k in ("names", "severities", "files")}
    identity.update({"n": int(x.shape[0]), "source": "files" if real else "generated"})
    return set_key(identity, x, y, real), real


def read_files(real: Path, files: str, names, severities, n: int) -> tuple[dict, np.ndarray, dict]:
    """The first ``n`` images of each (corruption, severity) through robustbench's loader."""
    from .compat import import_robustbench

    import_robustbench()
    from robustbench.data import load_corruptions_cifar
    from robustbench.model_zoo.enums import BenchmarkDataset

    dataset = {"cifar10": BenchmarkDataset.cifar_10, "cifar100": BenchmarkDataset.cifar_100}[files]
    images, skipped, labels = {}, {}, None
    for name in names:
        if not (real / f"{name}.npy").is_file():
            skipped[name] = f"{real / (name + '.npy')} is missing"
            continue
        for severity in severities:
            x, y = load_corruptions_cifar(dataset, n, severity, str(real.parent), [name])
            images[(name, severity)] = to_uint8(x.numpy())
            labels = y.numpy().astype(np.int64)
    return images, labels, skipped


def generate(x: np.ndarray, names, severities, seed: int = 0) -> tuple[dict, dict]:
    """Each corruption of imagecorruptions at each severity, image by image (uint8 NCHW in and out);
    one that fails on the first image is skipped with its reason."""
    from .compat import import_imagecorruptions

    corrupt = import_imagecorruptions().corrupt
    nhwc = np.transpose(x, (0, 2, 3, 1))
    grey = nhwc.shape[-1] == 1
    images, skipped = {}, {}
    state = np.random.get_state()  # imagecorruptions draws from numpy's global stream
    try:
        for index, name in enumerate(names):
            for severity in severities:
                out = np.empty_like(nhwc)
                try:
                    for i, image in enumerate(nhwc):
                        np.random.seed((seed * 1_000_003 + index * 101 + severity) * 100_003 % 2**32 + i)
                        corrupted = np.asarray(corrupt(image[..., 0] if grey else image, severity=severity,
                                                       corruption_name=name))
                        if grey and corrupted.ndim == 3:
                            corrupted = corrupted.mean(axis=-1)
                        out[i] = np.clip(np.rint(corrupted), 0, 255).reshape(out[i].shape)
                except Exception as exc:  # noqa: BLE001 (a third-party corruption's own error)
                    skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    break
                images[(name, severity)] = np.ascontiguousarray(np.transpose(out, (0, 3, 1, 2)))
            if name in skipped:
                for severity in severities:
                    images.pop((name, severity), None)
    finally:
        np.random.set_state(state)
    return images, skipped


def corrupted_set(config: dict, x: np.ndarray, y: np.ndarray, cache_dir: Path,
                  message: Callable[[str], None] = lambda text: None) -> CorruptedSet:
    """The corrupted set of the test images ``x`` (float [0, 1], NCHW) and labels ``y`` under
    ``config`` (names, severities, files, data_dir), from the cache, the real files or generated."""
    key, real = key_of(config, x, y)
    names, severities = list(config["names"]), list(config["severities"])
    path = Path(cache_dir) / f"corruptions-{key}.npz"
    cached = _read(path, key)
    if cached is not None:
        return cached
    if real is not None:
        images, labels, skipped = read_files(real, config["files"], names, severities, int(x.shape[0]))
        source = "files"
    else:
        images, skipped = generate(to_uint8(x), names, severities)
        labels, source = np.asarray(y, dtype=np.int64), "generated"
    for name, reason in skipped.items():
        message(f"corruption {name} skipped: {reason}")
    if not images:
        raise RkbenchError(f"no corruption could be made for these images ({x.shape[2]}x{x.shape[3]}): "
                           f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    result = CorruptedSet(key, source, images, labels if labels is not None else np.asarray(y), skipped)
    _write(path, result)
    return result


def _write(path: Path, result: CorruptedSet) -> None:
    arrays = {f"{name}@{severity}": images for (name, severity), images in result.images.items()}
    arrays["__labels"] = result.labels
    arrays["__meta"] = np.frombuffer(json.dumps({"key": result.key, "source": result.source,
                                                 "skipped": result.skipped}).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    store.atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")


def _read(path: Path, key: str) -> CorruptedSet | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["__meta"].tobytes().decode())
            images = {}
            for name in stored.files:
                if not name.startswith("__"):
                    corruption, severity = name.rsplit("@", 1)
                    images[(corruption, int(severity))] = stored[name]
            labels = stored["__labels"]
    except Exception:  # absent or damaged: made again, never trusted
        return None
    if meta.get("key") != key:
        return None
    return CorruptedSet(key, meta["source"], images, labels, meta.get("skipped") or {})


def accuracies(predict: Callable[[np.ndarray], np.ndarray], corrupted: CorruptedSet) -> dict[str, list[float]]:
    """corruption -> accuracy at each severity (in the set's order); ``predict`` maps uint8 images to classes."""
    out: dict[str, list[float]] = {}
    for (name, severity), images in sorted(corrupted.images.items(), key=lambda item: (CORRUPTIONS.index(item[0][0])
                                                                                       if item[0][0] in CORRUPTIONS
                                                                                       else 99, item[0])):
        labels = corrupted.labels[: images.shape[0]]
        out.setdefault(name, []).append(float((predict(images) == labels).mean()))
    return out
