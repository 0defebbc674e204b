"""A timm architecture with local weights as a teacher (``source: timm``).

```yaml
teachers:
  - {name: r50, source: timm, arch: resnet50, checkpoint: ~/weights/r50_cifar10.pt}
```

``checkpoint`` is required: a teacher with random weights teaches nothing (to train a timm
teacher inside the suite use ``source: train`` with ``model: timm, model_options: {arch: ...}``).
The network is created with ``pretrained=False`` (never downloaded) and wrapped like the
``timm`` student model (``rkbench.models.timm``): penultimate features from timm's
``forward_head(..., pre_logits=True)``. The file's sha256 is part of the teacher's identity.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..models import build_model
from ..weights import file_digest
from .base import TEACHER_SOURCES, TeacherParams, TeacherSource


class TimmTeacherParams(TeacherParams):
    arch: str = Field(description="any timm architecture name, e.g. resnet50")
    checkpoint: Path = Field(description="the weights file (timm never downloads here)")
    model_args: dict = Field(default_factory=dict, description="keyword arguments of timm.create_model")
    normalize: bool = Field(False, description="standardize pixels with the architecture's pretrained mean/std inside the model")


@TEACHER_SOURCES.register("timm", description="a timm architecture with a local state dict (arch, checkpoint, "
                          "model_args, normalize); never downloads", source="timm")
class Timm(TeacherSource):
    Params = TimmTeacherParams

    def identity(self, params: TimmTeacherParams) -> dict:
        return {"arch": params.arch, "model_args": params.model_args, "normalize": params.normalize,
                "sha256": file_digest(params.checkpoint)}

    def build(self, params: TimmTeacherParams, context):
        data = context.dataset
        return build_model("timm", data.num_classes, data.input_shape, arch=params.arch, model_args=params.model_args,
                           checkpoint=str(params.checkpoint), normalize=params.normalize)
