"""Tasks: what is asked, what is trained on and how an answer is read (``base.py`` is the protocol).

- ``UnitConversion`` (``unit_conversion/``): the shipped, generated task.
- ``OwnData`` (``own_data.py``): your own data in the formats it has (TRL, Alpaca, question/answer; JSON, JSONL,
  CSV, Parquet); ``NumericFile`` is its older name.

Select one in a config with ``data.task`` (``docs/tasks.md``). The names are imported on first use, so the
question generator (``unit_conversion/generator.py``) still loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Task": "sft_lightning.tasks.base",
    "TaskData": "sft_lightning.tasks.base",
    "NumericFile": "sft_lightning.tasks.numeric_file",
    "OwnData": "sft_lightning.tasks.own_data",
    "UnitConversion": "sft_lightning.tasks.unit_conversion.task",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
