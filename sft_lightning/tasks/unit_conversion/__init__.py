"""Unit conversion, the shipped task: the unit table and how a unit is read, the question generator, worked answers, the
factor lookup and the calculator, tied to the task protocol by ``task.py``. ``UnitConversion`` is imported on first use.
"""

from __future__ import annotations

from typing import Any

UNSEEN_VAL_SET = "val_unseen"  # the validation set phrased only with held-out templates and spellings
__all__ = ["UNSEEN_VAL_SET", "UnitConversion"]


def __getattr__(name: str) -> Any:
    if name != "UnitConversion":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sft_lightning.tasks.unit_conversion.task import UnitConversion

    return UnitConversion
