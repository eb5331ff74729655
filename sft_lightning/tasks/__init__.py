"""Tasks: what is asked, what is trained on and how an answer is read (``base.py`` is the protocol; docs/tasks.md).

``UnitConversion`` (generated) and ``OwnData`` (your files) are imported on first use, so the generator needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Task": "sft_lightning.tasks.base",
    "TaskData": "sft_lightning.tasks.base",
    "OwnData": "sft_lightning.tasks.own_data",
    "UnitConversion": "sft_lightning.tasks.unit_conversion.task",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
