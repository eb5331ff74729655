"""The older name of ``OwnData`` (``sft_lightning.tasks.own_data``), kept so configs that name it still run.

    data:
      task:
        class_path: sft_lightning.tasks.NumericFile
        init_args: {train_file: data/train.jsonl, val_file: data/val.jsonl}
"""

from __future__ import annotations

from sft_lightning.tasks.own_data import OwnData


class NumericFile(OwnData):
    """``OwnData`` under its first name (it read numeric question/answer files only)."""
