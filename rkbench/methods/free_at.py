"""Free adversarial training, "Adversarial Training for Free!" (Shafahi et al.; NeurIPS 2019)."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from .adversarial import FreeMethod
from .base import METHODS, MethodParams


class FreeATParams(MethodParams):
    m: int = Field(8, ge=1, description="replays of each minibatch (epochs are divided by m)")
    step_size: float | None = Field(None, gt=0, description="ascent step of delta (default: eps)")


@METHODS.register("free_at", description="Free-AT: CE(S(x+delta), y), each batch replayed m times, delta kept "
                  "and ascended from the same backward pass", source="Shafahi et al. NeurIPS 2019")
class FreeAT(FreeMethod):
    """loss = CE(S(x + delta), y); each minibatch is replayed m times and training epochs are divided
    by m, so the total cost equals natural training.

    One backward pass per replay gives both gradients: the weights' (the optimizer step) and the
    input gradient g on delta (a leaf with requires_grad), then delta <- clip_eps(delta + eps * sign(g)),
    re-projected onto valid pixels. delta starts at zero and persists across replays *and* across
    minibatches; it is method state, saved in checkpoints so a resumed run continues it.
    Defaults: m=8, step = eps; no teacher.

    Departure of the reference code (locuslab/fast_adversarial ``train_free.py``, after Shafahi et
    al.): it clips delta to valid pixels for the minibatch just used, so the next minibatch may see
    x + delta outside [0, 1]; rkbench re-projects delta onto valid pixels for each minibatch before
    its forward pass. ``training.epochs`` counts passes times m (80 = the reference's default
    10 x 8, ``train_free.py`` L23 and L30).
    """

    Params = FreeATParams
    official_attack_mode_source = ("locuslab/fast_adversarial CIFAR10/train_free.py:67 (model.train()), "
                                   "train_free.py:97 (the one training pass that also gives delta's gradient)")

    def loss(self, student, batch):
        return F.cross_entropy(student(self.perturbation.inputs(batch.x)), batch.y)
