"""A task of your own in a file: questions with numeric answers in ``.json`` or ``.jsonl``.

    data:
      task:
        class_path: sft_lightning.tasks.NumericFile
        init_args:
          train_file: data/train.jsonl
          val_file: data/val.jsonl     # or leave it out: the last val_size records are held out

``--data.train_file FILE`` (the older spelling) builds the same task.
"""

from __future__ import annotations

from sft_lightning.errors import check
from sft_lightning.metrics import MAIN_VAL_SET
from sft_lightning.records import DataError, holdout_split, load_records
from sft_lightning.tasks.base import Task, TaskData


class NumericFile(Task):
    """Training (and validation) records from files, scored by the number in the ``<answer>`` tag.

    Args:
        train_file: ``.json`` list of ``[question, answer]`` pairs or ``.jsonl`` with ``question``/``answer``.
        val_file: same formats; None holds out the last ``val_size`` records of ``train_file``.
        val_size: the hold-out's size when there is no ``val_file``.
        allow_conflicting_answers: a file that asks the same question twice with different answers is an error
            naming both records; true trains on both, with a warning.
    """

    def __init__(
        self, train_file: str, val_file: str | None = None, val_size: int = 200, allow_conflicting_answers: bool = False
    ) -> None:
        check(val_size >= 1, "data.task.val_size", val_size, ">= 1")
        self.train_file = train_file
        self.val_file = val_file
        self.val_size = val_size
        self.allow_conflicting_answers = allow_conflicting_answers

    def load(self, seed: int, significant_digits: int) -> TaskData:
        train = self._read("train_file", self.train_file)
        if self.val_file is not None:
            return TaskData(train, {MAIN_VAL_SET: self._read("val_file", self.val_file)})
        train, val = holdout_split(train, self.val_size)
        return TaskData(train, {MAIN_VAL_SET: val}, first_index={MAIN_VAL_SET: len(train)})

    def _read(self, key: str, path: str) -> list:
        try:
            return load_records(path, allow_conflicts=self.allow_conflicting_answers)
        except DataError as exc:
            raise DataError(f"data.{key}: {exc}") from None
