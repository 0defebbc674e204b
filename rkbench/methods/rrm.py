"""Robust Representation Matching (Vaishnavi, Eykholt, Rahmati; USENIX Security 2022)."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import METHODS, Method, MethodParams

PROJECTION = "rrm_projection"  # the student's attribute holding the projection while it trains


class RRMParams(MethodParams):
    ce_weight: float = Field(0.005, ge=0, description="lambda, the weight of CE(S(x), y) (official 0.005)")


@METHODS.register("rrm", description="RRM: lambda*CE(S(x), y) - mean cos(z_S(x), z_T(x)), clean inputs only",
                  source="Vaishnavi et al. USENIX Security 2022 (Ethos-lab/robust-representation-matching)")
class RRM(Method):
    """loss = lambda * CE(S(x), y) - mean_i cos(P(z_S(x_i)), z_T(x_i)), z the penultimate features.

    Clean inputs only: no adversarial example is crafted, so a batch costs about what KD costs.
    Teacher features come from the trainer (once per batch, no grad, eval mode). When the feature
    sizes differ, P is a Linear(d_S, d_T) attached to the student in ``prepare`` (so the optimizer
    trains it) and detached again in ``finish``: the saved ``student.pt`` holds the bare architecture
    and reloads into ``build_model(...)`` unchanged; mid-training checkpoints include P, which
    ``prepare`` re-creates before a resume loads them. Otherwise P is the identity.
    Defaults: lambda=0.005 (the code's ``--xent-weight``; the feature weight is -1). Recipe
    (CIFAR-10): 48 epochs, SGD 0.1 with cosine decay, weight decay 5e-4, batch 128.

    Departure of the official code (``l_inf/train_rrm.py``): its ResNets map every penultimate
    vector to 512 with a Linear layer *inside the forward pass*, before the classifier, so the
    projection is part of the deployed student. rkbench keeps the student's architecture as
    registered and uses P only in the matching term. Cosine similarity with eps 1e-6, as the code.
    """

    Params = RRMParams
    uses_teacher = True
    uses_teacher_features = True

    def prepare(self, student, teacher):
        if teacher is None:
            return
        d_student, d_teacher = feature_dim(student, "student"), feature_dim(teacher, "teacher")
        if d_student != d_teacher:
            reference = next(student.parameters())
            projection = nn.Linear(d_student, d_teacher).to(reference.device, reference.dtype)
            setattr(student, PROJECTION, projection)

    def finish(self, student):
        if hasattr(student, PROJECTION):
            delattr(student, PROJECTION)

    def loss(self, student, batch):
        if not hasattr(student, "forward_with_features"):
            raise ConfigError(f"rrm needs the student's penultimate features; {type(student).__name__} "
                              f"has no forward_with_features")
        logits, features = student.forward_with_features(batch.x)
        projection = getattr(student, PROJECTION, None)
        if projection is not None:
            features = projection(features)
        similarity = F.cosine_similarity(features, batch.teacher_features, dim=1, eps=1e-6).mean()
        return self.params.ce_weight * F.cross_entropy(logits, batch.y) - similarity


def feature_dim(model: nn.Module, role: str) -> int:
    """The penultimate width: ``feature_dim`` (every rkbench model), else the classifier's input width."""
    dim = getattr(model, "feature_dim", None)
    if dim is None and isinstance(getattr(model, "head", None), nn.Linear):
        dim = model.head.in_features
    if dim is None:
        raise ConfigError(f"rrm needs the {role}'s penultimate feature size; {type(model).__name__} exposes "
                          f"neither feature_dim nor a Linear head")
    return int(dim)
