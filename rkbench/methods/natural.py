"""Natural (standard) training: the no-defence baseline."""
from __future__ import annotations

import torch.nn.functional as F

from .base import METHODS, Method


@METHODS.register("natural", description="standard training, CE(S(x), y); no teacher, no attack",
                  source="baseline")
class Natural(Method):
    """loss = CE(S(x), y)."""

    def loss(self, student, batch):
        return F.cross_entropy(student(batch.x), batch.y)
