"""Dataset sources (one file each) and batched augmentation."""
# importing a source registers it
from . import digits, imagefolder, npz, svhn, tinyimagenet, torchvision_cifar  # noqa: F401
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset

__all__ = ["DATASETS", "DatasetParams", "DatasetSource", "TensorDataset", "load_dataset"]


def load_dataset(name: str, options: dict | None = None) -> TensorDataset:
    source = DATASETS.get(name)()
    return source.load(source.Params(**(options or {})))
