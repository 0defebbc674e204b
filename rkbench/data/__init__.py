"""Dataset sources (one file each) and batched augmentation."""
# importing a source registers it
from . import digits, imagefolder, npz, svhn, tinyimagenet, torchvision_cifar  # noqa: F401
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset, carve_validation

__all__ = ["DATASETS", "DatasetParams", "DatasetSource", "TensorDataset", "carve_validation", "load_dataset"]


def load_dataset(name: str, options: dict | None = None) -> TensorDataset:
    """The source's splits; with ``validation`` set, a stratified validation split carved from
    the training split (the same for every source: ``carve_validation``)."""
    source = DATASETS.get(name)()
    params = source.Params(**(options or {}))
    return carve_validation(source.load(params), params)
