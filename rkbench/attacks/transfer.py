"""Transfer attacks: adversarial examples crafted with PGD on another model (the *source*: the run's
teacher, a teacher of the suite by name, or another run by its id) and evaluated on this one.

A student distilled from a public teacher (every RobustBench model is public) may be weaker against
examples crafted on that teacher than against its own gradients: ``transfer-teacher`` measures it.
The examples depend on the source and the test set only, so they are crafted once and shared by
every model attacked with them (``SuiteEvaluation`` caches them in the source's directory).

The attack declares ``needs_source_model``: whoever evaluates binds the crafted examples with
``use`` (``craft`` makes them); ``run`` then returns each example's crafted counterpart by its
position in the evaluation set. Unbound, it raises ``AttackError`` (never scores as 0 %).
Source: Papernot et al. 2017 (transferability); Szegedy et al. 2014.
"""
from __future__ import annotations

import torch
from pydantic import Field, field_validator

from ..errors import AttackError
from ..threat import default_step_size, parse_number
from .base import ATTACKS, Attack, AttackParams, register_preset
from .pgd import pgd


class TransferParams(AttackParams):
    source: str = Field("teacher", description="the model the examples are crafted on: teacher (the run's own), "
                                               "a teacher of the suite by name, or a run id")
    steps: int = Field(20, description="PGD steps on the source model")
    step_size: float | None = Field(None, description="default: the threat model's rule, as PGD")
    random_start: bool = Field(True, description="start from a uniform point in the eps ball")
    seed: int = Field(0, description="seed of the random starts (drawn per example)")

    _parse = field_validator("step_size", mode="before")(lambda cls, v: parse_number(v))


@ATTACKS.register("transfer", description="PGD crafted on a source model (source: teacher, a teacher's name "
                                          "or a run id), evaluated on this one; crafted once per source",
                  source="Papernot et al. 2017")
class Transfer(Attack):
    Params = TransferParams
    needs_source_model = True

    def __init__(self, threat, **options):
        super().__init__(threat, **options)
        self._crafted: torch.Tensor | None = None

    @property
    def source(self) -> str:
        return self.params.source

    @property
    def cost(self) -> float:
        # the crafting on the source (once, shared) plus one forward pass here: after the white-box
        # PGD of the same steps in the cascade, which then keeps its exact column
        return float(self.params.steps + 1)

    def craft(self, source_model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """PGD on ``source_model`` for every example (its start seeded by its position, as ``pgd``'s)."""
        p, threat = self.params, self.threat
        step_size = p.step_size if p.step_size is not None else default_step_size(threat.norm, threat.eps, p.steps)
        source_model.eval()
        out = []
        for start in range(0, x.shape[0], batch_size):
            ids = range(start, min(start + batch_size, x.shape[0]))
            out.append(pgd(source_model, x[start:start + batch_size], y[start:start + batch_size], norm=threat.norm,
                           eps=threat.eps, step_size=step_size, steps=p.steps, random_start=p.random_start,
                           example_seeds=[p.seed * 10_000_019 + i for i in ids]).detach())
        return torch.cat(out) if out else x[:0].clone()

    def use(self, crafted: torch.Tensor) -> None:
        """The examples ``craft`` made for the whole evaluation set, in its order."""
        self._crafted = crafted

    def run(self, model, x, y):
        if self._crafted is None:
            raise AttackError(f"transfer attack from {self.source!r}: no source examples bound "
                              f"(the evaluation names no source model)")
        ids = self.example_ids if self.example_ids is not None else torch.arange(x.shape[0])
        if int(ids.max()) >= self._crafted.shape[0]:
            raise AttackError("transfer attack: the crafted examples do not cover the evaluation set")
        return self._crafted[ids.long()].to(x.device, x.dtype)


register_preset("transfer-teacher", Transfer, "PGD-20 crafted on the run's teacher, evaluated on the student "
                "(crafted once per teacher and test set; none for teacher-free runs)", source="teacher")
