"""Dataset sources (one file each) and batched augmentation."""
from . import digits, imagefolder, npz, svhn, tinyimagenet, torchvision_cifar  # noqa: F401  (registers the built-in sources)
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset

__all__ = ["DATASETS", "DatasetParams", "DatasetSource", "TensorDataset", "load_dataset"]


def load_dataset(name: str, options: dict | None = None) -> TensorDataset:
    source = DATASETS.get(name)()
    return source.load(source.Params(**(options or {})))
