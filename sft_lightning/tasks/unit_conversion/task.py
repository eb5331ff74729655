"""The shipped task: unit-conversion questions from the generator, answered with worked answers and a calculator.

The older flags (``--data.train_size``, ``--data.unseen_val_size``, ``--data.families``, ...) build the same task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from sft_lightning.data.prompt import format_answer
from sft_lightning.data.records import DataError, QARecord, load_records
from sft_lightning.errors import check
from sft_lightning.evaluation.metrics import MAIN_VAL_SET
from sft_lightning.tasks.base import Task, TaskData
from sft_lightning.tasks.unit_conversion import UNSEEN_VAL_SET, calculator, factor_lookup
from sft_lightning.tasks.unit_conversion.conventions import Conventions
from sft_lightning.tasks.unit_conversion.generator import ConversionQuestion, generate_splits, select_units


class UnitConversion(Task):
    """Generated questions such as "How many meters are in 6 km?" (``sft_lightning.tasks.unit_conversion``).

        data:
          task:
            class_path: sft_lightning.tasks.UnitConversion
            init_args: {train_size: 40000, val_size: 300, unseen_val_size: 200, conventions: {ton: metric}}

    Args:
        train_size / val_size: generated set sizes.
        unseen_val_size: questions in the ``val_unseen`` set, phrased only with templates and unit spellings
            held out of training (0: none).
        answer_format: ``worked`` trains on answers written out as ``ft to m: 6×0.305=<answer>1.83</answer>``
            (``worked.py``), ``bare`` on the tag alone.
        families / units: restrict the generator (``generator.select_units``).
        val_file: score ``val`` on this file instead of generated questions (the formats ``OwnData`` reads).
        conventions: what a word whose meaning varies means (``ton``, ``kilobyte``, ``gallon``, ``calorie``; docs/data.md),
            e.g. ``--data.task.conventions.ton short``; questions, answers and the factor lookup all follow it.
    """

    def __init__(
        self,
        train_size: int = 2000,
        val_size: int = 200,
        unseen_val_size: int = 0,
        answer_format: Literal["worked", "bare"] = "worked",
        families: list[str] | None = None,
        units: dict[str, list[str]] | None = None,
        val_file: str | None = None,
        conventions: Conventions | None = None,
    ) -> None:
        check(train_size >= 1, "data.train_size", train_size, ">= 1")
        check(val_size >= 1, "data.val_size", val_size, ">= 1")
        check(unseen_val_size >= 0, "data.unseen_val_size", unseen_val_size, ">= 0")
        self.conventions = _checked_conventions(conventions)
        for key, restriction in (("data.families", (families, None)), ("data.units", (None, units))):
            try:
                select_units(*restriction, conventions=self.conventions)
            except ValueError as exc:
                raise DataError(f"{key}: {exc}") from None
        self.train_size, self.val_size, self.unseen_val_size = train_size, val_size, unseen_val_size
        self.answer_format = answer_format
        self.families, self.units = families, units
        self.val_file = val_file

    def load(self, seed: int, significant_digits: int) -> TaskData:
        self.seed = seed  # named by describe(): the same settings and seed generate the same records
        try:
            splits = generate_splits(
                self.train_size, self.val_size, seed, families=self.families, units=self.units, n_unseen=self.unseen_val_size,
                conventions=self.conventions,
            )
        except ValueError as exc:  # more questions than the selected units allow
            raise DataError(f"data.train_size/val_size/unseen_val_size: {exc}") from None
        if self.val_file:
            try:
                val = load_records(self.val_file)
            except DataError as exc:
                raise DataError(f"data.val_file: {exc}") from None
        else:
            val = self._records(splits.val, significant_digits)
        sets = {MAIN_VAL_SET: val}
        if splits.val_unseen:
            sets[UNSEEN_VAL_SET] = self._records(splits.val_unseen, significant_digits)
        resizable = [UNSEEN_VAL_SET] + ([] if self.val_file else [MAIN_VAL_SET])
        return TaskData(self._records(splits.train, significant_digits), sets, [name for name in resizable if name in sets])

    def _records(self, questions: Sequence[ConversionQuestion], digits: int) -> list[QARecord]:
        """Records of generated questions, with the worked target when ``answer_format`` is ``worked``."""
        if self.answer_format == "bare":
            return [QARecord(q.question, q.answer) for q in questions]
        return [QARecord(q.question, q.answer, format_answer(q.worked_value, digits, q.working)) for q in questions]

    # a set-up ends with "×" (the factor's place), a temperature's with its first operator, a working with "=<answer>"
    completion_trigger = ("×", "+", "-", ">")

    def completion(self, text: str) -> str | None:
        """The factor from the unit table once the model has named the units and the quantity
        (``factor_lookup.py``), else the exact value of the model's own set-up (``calculator.py``)."""
        return factor_lookup.completion(text, self.conventions) or calculator.completion(text)

    def describe(self, index: int, record: QARecord) -> str:
        return record.origin or f"generated training record {index} (seed {getattr(self, 'seed', '?')})"


def _checked_conventions(given: Conventions | Mapping[str, str] | None) -> Conventions:
    """The task's conventions (a mapping where a run's saved config.yaml is read back), or an error naming the fix."""
    try:
        return Conventions.of(given)
    except (TypeError, ValueError) as exc:
        raise DataError(f"data.task.conventions: {exc}") from None
