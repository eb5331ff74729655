"""Unit conversion, the shipped task: the unit table (``table.py``), how a unit is read (``units.py``, with
``conventions.py`` and composed rates, ``rates.py``), the pairs asked (``pairs.py``), phrasings (``phrasings.py``), the question
generator (``generator.py``), worked answers (``worked.py``), the factor lookup (``factor_lookup.py``), the calculator (``calculator.py``) and the task
that ties them to the protocol of ``sft_lightning.tasks.base`` (``task.py``). ``UnitConversion`` is imported on
first use, so the generator loads without torch."""

from __future__ import annotations

from typing import Any

UNSEEN_VAL_SET = "val_unseen"  # the validation set phrased only with held-out templates and spellings
__all__ = ["UNSEEN_VAL_SET", "UnitConversion"]


def __getattr__(name: str) -> Any:
    if name != "UnitConversion":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sft_lightning.tasks.unit_conversion.task import UnitConversion

    return UnitConversion
