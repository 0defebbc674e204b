"""The threat model: which ball the adversary lives in, and the default attack inside training."""
from __future__ import annotations

from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def parse_number(value):
    """Accept 0.031, 8, or the field's habit "8/255"."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number: {value!r} (write 0.031 or 8/255)") from None
    return value


class ThreatModel(BaseModel):
    """Norm ball of radius ``eps`` around clean pixels in [0, 1]; ``steps``/``step_size`` are the
    defaults of training-time attacks (ARD: 10 steps of 2/255 at 8/255)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    norm: Literal["linf", "l2"] = Field("linf", description="the norm of the ball")
    eps: float = Field(8 / 255, description='its radius, in pixels in [0, 1]; also "8/255" (> 0)')
    step_size: float | None = Field(None, description="training attacks' step; default: eps/4 (Linf, 2/255 at "
                                                      "8/255) or 2.5*eps/steps (L2)")
    steps: int = Field(10, description="training attacks' steps (>= 1)")

    _parse = field_validator("eps", "step_size", mode="before")(lambda cls, v: parse_number(v))

    @field_validator("eps")
    @classmethod
    def _eps_positive(cls, eps: float) -> float:
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        return eps

    @field_validator("steps")
    @classmethod
    def _steps_positive(cls, steps: int) -> int:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return steps

    @model_validator(mode="after")
    def _default_step(self) -> "ThreatModel":
        if self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.norm, self.eps, self.steps))
        elif self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        return self


def default_step_size(norm: str, eps: float, steps: int) -> float:
    return eps / 4 if norm == "linf" else 2.5 * eps / steps
