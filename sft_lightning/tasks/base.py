"""The task seam: what the training machinery needs to know about a question/answer task, and nothing more.

``SFTDataModule`` and ``SFTModule`` speak only this protocol, so a new task is one class (docs/tasks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from sft_lightning.data.prompt import format_answer
from sft_lightning.data.records import DataError, QARecord
from sft_lightning.evaluation.metrics import MAIN_VAL_SET, parse_answers


@dataclass
class TaskData:
    """A task's records: the training set and the validation sets by name (``val`` first).

    ``resizable`` names the sets drawn at random from something larger (a generator): a time budget may score
    only their first N questions. Every other set (hand-written, a user's file) is always scored whole.
    ``first_index`` numbers a set's samples from that index on (default 0): a set held out of the training
    file's tail is numbered as in the file, after the training records.
    A record's answer may be a number (scored within the tolerance) or a text (normalised exact match).
    """

    train: list[QARecord]
    val_sets: dict[str, list[QARecord]]
    resizable: list[str] = field(default_factory=list)
    first_index: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines for the run's summary (how a validation set was chosen)

    def __post_init__(self) -> None:
        if MAIN_VAL_SET not in self.val_sets:
            raise DataError(f"a task's validation sets must include '{MAIN_VAL_SET}' (got {sorted(self.val_sets)})")
        self.val_sets = {MAIN_VAL_SET: self.val_sets[MAIN_VAL_SET], **self.val_sets}
        unknown = set(self.resizable) - set(self.val_sets)
        if unknown:
            raise DataError(f"resizable sets {sorted(unknown)} are not validation sets of the task")


class Task:
    """A question/answer task whose answers are numbers or texts. Subclass it and override ``load``; the rest has defaults.

    ``load`` (the records, validated before any model loads), ``target`` (the supervised text; EOS is appended),
    ``parse`` / ``parse_text`` (what an output answers), ``completion`` (the generation hook, called only when
    ``model.calculator`` is on: the text to write at once, its end included, or None) and ``describe`` (where a
    training record comes from, for reports of a bad step).
    """

    def load(self, seed: int, significant_digits: int) -> TaskData:
        """The task's records. ``seed`` (``data.seed``) seeds a generator, ``significant_digits``
        (``data.significant_digits``) rounds written answers; a task may ignore both."""
        raise NotImplementedError(f"{type(self).__name__} must implement load(seed, significant_digits) -> TaskData")

    def target(self, record: QARecord, significant_digits: int) -> str:
        """The supervised text of ``record``: its own target, else the bare tag with the rounded answer."""
        return record.target or format_answer(record.answer, significant_digits)

    def parse(self, texts: list[str]) -> Tensor:
        """The number each text answers (float64, NaN for none)."""
        return parse_answers(texts)

    def parse_text(self, texts: list[str]) -> list[str]:
        """The text each output answers, for records whose answer is a text (scored by normalised exact match)."""
        return [text.strip() for text in texts]

    # Answers may be free text: an output with no number and no reference (``predict``, ``ask``) is shown as text.
    free_text: bool = False

    # A cheap pre-check for ``completion``: when set, it is only called after a token whose text ends with this
    # (or with one of these).
    completion_trigger: str | tuple[str, ...] | None = None

    def completion(self, text: str) -> str | None:
        """Text to force after ``text`` (ending the answer), or None: no hook by default."""
        return None

    def describe(self, index: int, record: QARecord) -> str:
        """Where training record ``index`` is: its place in a file when it has one."""
        return record.origin or f"training record {index}"

    @property
    def has_completion(self) -> bool:
        """Whether the task overrides ``completion`` (then generation calls it)."""
        return type(self).completion is not Task.completion
