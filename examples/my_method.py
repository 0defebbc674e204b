"""A new robust-distillation method as a plugin file: rkbench is not forked, nothing in it changes.

Adversarial KD ("akd"): the student matches the teacher *on the adversarial example*,
    loss = alpha * t^2 * KL(T_t(x_adv) || S_t(x_adv)) + (1 - alpha) * CE(S(x_adv), y),
x_adv = PGD on the student's CE (the suite's threat model: eps, steps, step size), student in eval
mode. ARD instead matches the teacher's *clean* prediction T(x); here the teacher is queried on x_adv.

    rkbench run examples/plugin_suite.yaml --plugin examples/my_method.py
"""
import torch
import torch.nn.functional as F
from pydantic import Field

from rkbench.attacks import pgd_attack
from rkbench.methods import METHODS, Method, MethodParams, kl_divergence, model_mode
from rkbench.threat import default_step_size


class AKDParams(MethodParams):  # the suite's `akd: {t: 4, alpha: 0.9}` is validated against this
    t: float = Field(4.0, gt=0, description="softmax temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term against CE")


@METHODS.register("akd", description="adversarial KD: alpha*t^2*KL(T_t(x_adv)||S_t(x_adv)) + (1-alpha)*CE",
                  source="examples/my_method.py")
class AdversarialKD(Method):
    Params = AKDParams
    uses_teacher = True  # the trainer hands the frozen teacher over (batch.teacher, batch.teacher_logits)

    def loss(self, student, batch):
        p, threat = self.params, self.threat
        step = threat.step_size or default_step_size(threat.norm, threat.eps, threat.steps)
        with model_mode(student, train=False):
            x_adv = pgd_attack(student, batch.x, batch.y, norm=threat.norm, eps=threat.eps, step_size=step,
                               steps=threat.steps, generator=self.generator)
        with torch.no_grad():
            teacher_logits = batch.teacher(x_adv)
        logits = student(x_adv)
        distill = kl_divergence(logits, teacher_logits, p.t, "batchmean")
        return p.alpha * p.t ** 2 * distill + (1 - p.alpha) * F.cross_entropy(logits, batch.y)
