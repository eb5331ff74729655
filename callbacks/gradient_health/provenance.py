"""The answer of a replay: where the first non-finite value appeared, in words a trip message can quote.

Kept apart from the replay itself so that the report can read an answer without knowing how it was found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

HALF_MAX = {"float16": torch.finfo(torch.float16).max, "bfloat16": torch.finfo(torch.bfloat16).max}

# status values (stable strings: tests and report readers match on them)
IN_BATCH = "batch"
FORWARD = "forward"
FORWARD_INPUT = "forward_input"
LOSS = "loss"
BACKWARD = "backward"
FINITE = "finite"
UNAVAILABLE = "unavailable"
SPIKE = "spike"  # not a non-finite value: the samples of a finite spike (no replay with hooks)


@dataclass
class Provenance:
    """The answer to "where did the first non-finite value appear?" for one replayed batch."""

    status: str
    module: str | None = None
    where: str | None = None  # e.g. "forward output", "gradient w.r.t. its input", "gradient of head.weight"
    dtype: str | None = None
    inputs_finite: bool | None = None
    max_abs_before: float | None = None  # largest finite magnitude seen just before (inputs, or gradients so far)
    float32_max_abs: float | None = None  # a 16-bit forward output recomputed in float32
    weight_max_abs: float | None = None  # the module's own weights, for a 16-bit output (autocast casts them)
    rows: list[int] | None = None  # batch rows that carried the non-finite values
    batch_idx: int | None = None
    detail: str = ""
    samples: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One clause for the trip message, e.g. ``first non-finite: encoder.1 forward output (float16, ...)``."""
        if self.status in (FINITE, UNAVAILABLE, SPIKE):
            return self.detail
        if self.status == IN_BATCH:
            return f"first non-finite: in the batch itself ({self.detail})"
        if self.status == LOSS:
            return f"first non-finite: the loss in training_step ({self.detail})"
        facts = [self.dtype or "?"]
        if self.status in (FORWARD, FORWARD_INPUT):
            facts.append("inputs finite" if self.inputs_finite else "inputs non-finite")
            if self.max_abs_before is not None:
                facts.append(f"max |x| before {self.max_abs_before:.2g}")
            if self.float32_max_abs is not None:
                facts.append(f"{self.float32_max_abs:.2g} when recomputed in float32")
            if self._weights_overflow():
                facts.append(f"max |w| {self.weight_max_abs:.2g}")
        elif self.max_abs_before is not None:
            facts.append(f"max |grad| before {self.max_abs_before:.2g}")
        return f"first non-finite: {self.module} {self.where} ({', '.join(facts)})"

    def _weights_overflow(self) -> bool:
        limit = HALF_MAX.get(self.dtype or "")
        return limit is not None and self.weight_max_abs is not None and self.weight_max_abs > limit

    def advice(self) -> str | None:
        """A fix aimed at the culprit, or ``None`` when only the generic advice applies."""
        limit = HALF_MAX.get(self.dtype or "")
        if self.status == IN_BATCH:
            return "the batch holds non-finite values: clean or filter those records"
        if self.status == FORWARD and self._weights_overflow():
            return (
                f"{self.module}'s weights (max |w| {self.weight_max_abs:.2g}) exceed the {self.dtype} range ({limit:g})"
                " that autocast casts them to: find what grew them (learning rate, a bad checkpoint, weight surgery),"
                " or use bf16-mixed"
            )
        if self.status == FORWARD and limit is not None and (self.float32_max_abs or 0.0) > limit:
            return (
                f"{self.module}'s output exceeds the {self.dtype} range ({limit:g}): use bf16-mixed or 32-true, "
                f"or run {self.module} in float32"
            )
        if self.status == FORWARD:
            return f"{self.module}'s forward makes non-finite values from finite inputs: look there for 0/0, log(0), sqrt(<0)"
        if self.status == FORWARD_INPUT:
            return f"the inputs of {self.module} are made non-finite by code outside any submodule: look there"
        if self.status == LOSS:
            return "every module output is finite: look at the loss code in training_step (log(0), 0/0, empty means)"
        if self.status == BACKWARD:
            return (
                f"{self.module}'s backward turns finite gradients non-finite: look for sqrt/norm/division at 0 in its "
                "forward, or a gradient too large for its dtype"
            )
        return None
