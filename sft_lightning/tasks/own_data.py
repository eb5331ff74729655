"""Your data in the formats it already has (TRL, Alpaca, question/answer; JSON, JSONL, CSV, Parquet), as a task.

    sft-lightning fit --config configs/own_data.yaml --data.train_file FILE
"""

from __future__ import annotations

import torch
from torch import Tensor

from sft_lightning.data.records import DataError, QARecord, holdout_fraction, holdout_split, load_records
from sft_lightning.errors import check, finite
from sft_lightning.evaluation.metrics import MAIN_VAL_SET, parse_final_number
from sft_lightning.tasks.base import Task, TaskData

VAL_BOUNDS = (1, 500)  # a held-out share is at least one record and at most this many (validation time)


class OwnData(Task):
    """Training (and validation) records from a user's files, in any format ``sft_lightning.data.formats`` detects.

    An answer is scored as its reference is: a number within the tolerance (the ``<answer>`` tag, a GSM8K ``#### N``
    or the output's last number), a text by normalised exact match; ``text`` records by their loss only.

    Args:
        train_file: ``.json``, ``.jsonl``, ``.csv`` or ``.parquet``.
        val_file: the same formats; None holds records of ``train_file`` out.
        val_size: without ``val_fraction``: hold out the last ``val_size`` records of ``train_file``.
        val_fraction: hold out this share of ``train_file``'s records (at least 1, at most 500), drawn by the seed.
        allow_conflicting_answers: the same question twice with different answers is an error naming both
            records; true trains on both, with a warning.
    """

    free_text = True

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        val_size: int = 200,
        val_fraction: float | None = None,
        allow_conflicting_answers: bool = False,
    ) -> None:
        check(val_size >= 1, "data.val_size", val_size, ">= 1")
        check(val_fraction is None or (finite(val_fraction) and 0 < val_fraction < 1), "data.val_fraction", val_fraction,
              "in (0, 1) (or null: hold out the last data.val_size records)", "use e.g. 0.1")
        self.train_file = train_file
        self.val_file = val_file
        self.val_size = val_size
        self.val_fraction = val_fraction
        self.allow_conflicting_answers = allow_conflicting_answers

    def load(self, seed: int, significant_digits: int) -> TaskData:
        records = self._read("train_file", self.train_file)
        if self.val_file is not None:
            return TaskData(records, {MAIN_VAL_SET: self._read("val_file", self.val_file)})
        if self.val_fraction is None:
            train, val = holdout_split(records, self.val_size)
            return TaskData(train, {MAIN_VAL_SET: val}, first_index={MAIN_VAL_SET: len(train)})
        train, held = holdout_fraction(records, self.val_fraction, seed, VAL_BOUNDS)
        note = (
            f"{'val':<16} {len(held)} of the {len(records)} records of {self.train_file} held out "
            f"(data.val_fraction {self.val_fraction:g}, bounded to {VAL_BOUNDS[0]}-{VAL_BOUNDS[1]}, drawn with data.seed {seed})"
        )
        return TaskData(train, {MAIN_VAL_SET: [records[i] for i in held]}, notes=[note])

    def parse(self, texts: list[str]) -> Tensor:
        """The number each output gives: the ``<answer>`` tag, else GSM8K's ``#### N``, else its last number."""
        values = [parse_final_number(text) for text in texts]
        return torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float64)

    def _read(self, key: str, path: str) -> list[QARecord]:
        try:
            return load_records(path, allow_conflicts=self.allow_conflicting_answers)
        except DataError as exc:
            raise DataError(f"data.{key}: {exc}") from None
