"""A new robust-distillation method as a plugin file: rkbench is not forked, nothing in it changes.

Adversarial KD ("akd"): the student matches the teacher *on the adversarial example*,
    loss = alpha * t^2 * KL(T_t(x_adv) || S_t(x_adv)) + (1 - alpha) * CE(S(x_adv), y),
x_adv = the shared crafting of the adversarial methods: PGD on the student's CE (the suite's threat
model: eps, steps, step size; ``attack_steps``, ``attack_step_size``, ``attack_mode`` override them).
ARD instead matches the teacher's *clean* prediction T(x); here the teacher is queried on x_adv.

    rkbench run examples/plugin_suite.yaml --plugin examples/my_method.py
"""
import torch
import torch.nn.functional as F
from pydantic import Field

from rkbench.methods import METHODS, AdversarialMethod, AdversarialParams, kl_divergence


class AKDParams(AdversarialParams):  # the suite's `akd: {t: 4, alpha: 0.9}` is validated against this
    t: float = Field(4.0, gt=0, description="softmax temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term against CE")


@METHODS.register("akd", description="adversarial KD: alpha*t^2*KL(T_t(x_adv)||S_t(x_adv)) + (1-alpha)*CE",
                  source="examples/my_method.py")
class AdversarialKD(AdversarialMethod):
    Params = AKDParams
    uses_teacher = True  # the trainer hands the frozen teacher over (batch.teacher)
    needs_teacher_logits = False  # the loss queries the teacher on x_adv: no clean teacher pass is paid for

    def loss(self, student, batch):
        p = self.params
        x_adv = self.craft(student, batch.x, batch.y)
        with torch.no_grad():
            teacher_logits = batch.teacher(x_adv)
        logits = student(x_adv)
        return {"kl": p.alpha * p.t ** 2 * kl_divergence(logits, teacher_logits, p.t, "batchmean"),
                "ce": (1 - p.alpha) * F.cross_entropy(logits, batch.y)}  # named terms: summed, logged per epoch
