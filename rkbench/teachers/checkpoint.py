"""A local checkpoint of a registered architecture, loaded with ``weights_only=True``."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..models import build_model
from ..weights import file_digest, fit_weights, load_state_dict
from .base import TEACHER_SOURCES, TeacherParams, TeacherSource


class CheckpointParams(TeacherParams):
    model: str = Field(description="the registered architecture the weights fit (rkbench list models)")
    model_options: dict = Field(default_factory=dict, description="options of that model, e.g. {width: 10}")
    path: Path = Field(description="the weights file (read with torch.load(weights_only=True))")
    key: str | None = Field(None, description='the key of the weights when the file wraps them in a dict, e.g. "state_dict"')
    strip_prefix: str = Field("module.", description="prefix removed from every key (DataParallel checkpoints)")


@TEACHER_SOURCES.register("checkpoint", description="a local state dict for a registered architecture "
                          "(weights_only=True)", source="local file")
class Checkpoint(TeacherSource):
    Params = CheckpointParams

    def identity(self, params: CheckpointParams) -> dict:
        return {"model": params.model, "model_options": params.model_options, "sha256": file_digest(params.path)}

    def build(self, params: CheckpointParams, context):
        data = context.dataset
        model = build_model(params.model, data.num_classes, data.input_shape, **params.model_options)
        state = load_state_dict(params.path, params.key, params.strip_prefix)
        return fit_weights(model, state, params.path, f"model {params.model!r}")
