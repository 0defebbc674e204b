"""A teacher trained inside the suite (e.g. PGD adversarial training), cached for every run."""
from __future__ import annotations

import torch
from pydantic import Field

from ..models import build_model
from ..weights import fit_weights, load_state_dict
from .base import TEACHER_SOURCES, TeacherParams, TeacherSource


class TrainParams(TeacherParams):
    model: str = Field(description="the registered architecture to train (rkbench list models)")
    model_options: dict = Field(default_factory=dict, description="options of that model")
    method: str = Field("at", description="a teacher-free method to train it with (at, trades, natural, ...)")
    method_params: dict = Field(default_factory=dict, description="that method's parameters")
    training: dict = Field(default_factory=dict, description="overrides of the suite's training section")
    seed: int = Field(0, description="the teacher's training seed")


@TEACHER_SOURCES.register("train", description="trained in the suite with a registered method (e.g. at)",
                          source="rkbench trainer")
class Train(TeacherSource):
    Params = TrainParams
    trains = True

    def build(self, params: TrainParams, context):
        torch.manual_seed(params.seed)
        model = self.architecture(params, context)
        # params.training is already merged into context.training (the suite's plan did it)
        return context.train(model, params.method, params.method_params, params.seed, context.work_dir)

    def describe(self, params: TrainParams) -> str:
        return f"{params.model}, {params.method}"

    def restore(self, params: TrainParams, context, weights):
        return fit_weights(self.architecture(params, context), load_state_dict(weights, strip_prefix=""), weights,
                           f"teacher model {params.model}")

    @staticmethod
    def architecture(params: TrainParams, context):
        data = context.dataset
        return build_model(params.model, data.num_classes, data.input_shape, **params.model_options)

