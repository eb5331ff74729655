"""Reading and validating question/answer records, before any model or tokenizer is loaded.

Every bad input is one ``DataError`` naming the file, the record and the fix: a typo in record 9,000 should cost a second, not a run.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Input data is unusable; the message names the file/record and what to do."""


Turn = tuple[str, str]  # (role, content): "system", "user" or "assistant"


@dataclass(frozen=True)
class QARecord:
    """A question, the answer it is scored against, and optionally the exact text to train on (a worked answer).

    ``answer``: a number (within a tolerance), a text (normalised exact match) or None (``text`` data: trained on,
    never scored; ``question`` is then empty). ``context``: the conversation's earlier turns (the assistant's are
    trained on too). ``origin``: where a file's record is (``"data/train.jsonl line 17"``) for reports about a bad
    sample; None for generated records, and left out of equality and hashing.
    """

    question: str
    answer: float | str | None
    target: str | None = None
    origin: str | None = field(default=None, compare=False)
    context: tuple[Turn, ...] = ()


def normalize_question(text: str) -> str:
    """Key used for de-duplication: case, spacing and final punctuation ignored."""
    return " ".join(text.casefold().split()).rstrip(".?! ")


def load_records(path: str | Path, allow_conflicts: bool = False) -> list[QARecord]:
    """Records from a user's ``.json``, ``.jsonl``, ``.csv`` or ``.parquet`` file, in any format that
    ``sft_lightning.data.formats`` detects, or a ``.json`` list of ``[question, answer]`` pairs.

    Each ``origin`` is ``"PATH line N"`` (.jsonl, as an editor numbers lines), ``"PATH item N"`` (.json) or
    ``"PATH row N"`` (a table), N 1-based. The same question twice with different answers is an error naming both
    records (a model cannot learn both; one is a data bug); ``allow_conflicts`` turns it into a warning.
    """
    from sft_lightning.data.files import read_located_records  # imports this module

    located = read_located_records(path)
    if not located:
        raise DataError(f"{Path(path).expanduser()}: contains no records. Fix: add at least one question/answer pair.")
    _check_conflicts(located, allow_conflicts)
    return [record for _, record in located]


def _check_conflicts(located: Sequence[tuple[str, QARecord]], allow: bool) -> None:
    """The first question asked twice with answers more than 1e-6 apart (relative): an error, or with
    ``allow`` a warning per such question."""
    first: dict[str, tuple[str, QARecord]] = {}
    for where, record in located:
        key = " ".join(record.question.casefold().split()).rstrip(".?! ")
        if key not in first:
            first[key] = (where, record)
            continue
        where0, record0 = first[key]
        if record.context != record0.context or not record.question or _same_answer(record.answer, record0.answer):
            continue
        message = (
            f"{where} asks the question of {where0.split(': ', 1)[-1]} again ({record.question[:60]!r}) but answers "
            f"{show_answer(record.answer)} instead of {show_answer(record0.answer)}"
        )
        if not allow:
            raise DataError(f"{message}. Fix: keep one answer (or pass --data.allow_conflicting_answers true to train on both).")
        warnings.warn(f"{message}; training on both (data.allow_conflicting_answers)", stacklevel=3)


def _same_answer(a: float | str | None, b: float | str | None) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def show_answer(answer: float | str | None, limit: int = 60) -> str:
    """An answer for a message or a table: a number in short form, a text quoted (cut to ``limit``)."""
    if answer is None:
        return "-"
    if isinstance(answer, float):
        return f"{answer:.6g}"
    return _short(answer, limit)


def read_text_file(path: Path) -> str:
    """A user's text file as UTF-8, with or without the byte-order mark some editors write.

    Bytes that are not UTF-8 (a file saved as Latin-1 or UTF-16) are a DataError naming the line,
    column and byte offset, not a UnicodeDecodeError traceback.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {column} (byte {exc.start}): byte 0x{data[exc.start]:02x} is not UTF-8 text. "
            "Fix: save the file as UTF-8 (most editors offer it under 'Save as' / encoding)."
        ) from None


def make_record(question: object, answer: object, where: str = "record") -> QARecord:
    """A validated record: a non-empty question and its reference (``reference``): a finite number, a
    GSM8K-style worked answer (trained on as written, scored by its final ``#### N``) or a text."""
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question must be a non-empty string, got {_short(question)}.")
    value, target = reference(answer, where)
    return QARecord(question.strip(), value, target)


_FINAL_ANSWER = re.compile(r"####\s*([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


def reference(answer: object, where: str = "record") -> tuple[float | str, str | None]:
    """What an answer is scored against, and the text to train on (None: the bare ``<answer>`` tag).

    A number or a numeric string is a number (trained on the tag, as the project's own files); a text ending
    in ``#### N`` (GSM8K) is the number N, trained on as written; any other text is a text answer.
    """
    if isinstance(answer, str) and answer.strip():
        text = answer.strip()
        final = _FINAL_ANSWER.search(text)
        if final is not None and (value := _to_number(final.group(1))) is not None:
            return value, text
        if _to_number(text) is None:
            return text, text
    value = _to_number(answer)
    if value is None:
        raise DataError(
            f"{where}: answer must be a number or a non-empty text, got {_short(answer)}. Fix: correct or remove the record."
        )
    if not math.isfinite(value):
        raise DataError(f"{where}: answer must be finite, got {answer!r}. Fix: remove the record or correct its answer.")
    return value, None


def _to_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", "").strip())
        except ValueError:
            return None
    return None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def holdout_split(records: Sequence[QARecord], val_size: int) -> tuple[list[QARecord], list[QARecord]]:
    """Last ``val_size`` records become validation (deterministic; the file's order is the user's)."""
    if not 0 < val_size < len(records):
        raise DataError(
            f"cannot hold out {val_size} validation records from {len(records)}. "
            "Fix: give --data.val_file, a smaller --data.val_size, or a share with --data.val_fraction 0.1."
        )
    return list(records[:-val_size]), list(records[-val_size:])


def holdout_fraction(
    records: Sequence[QARecord], fraction: float, seed: int, bounds: tuple[int, int] = (1, 1000)
) -> tuple[list[QARecord], list[int]]:
    """``fraction`` of the records, at least ``bounds[0]`` and at most ``bounds[1]``, drawn by ``seed``: the
    training records (in file order) and the indices of those held out (sorted)."""
    if len(records) < 2:
        raise DataError(
            f"cannot hold out a validation share from {len(records)} record. Fix: add records or give --data.val_file."
        )
    size = min(max(round(fraction * len(records)), bounds[0]), bounds[1], len(records) - 1)
    held = sorted(random.Random(seed).sample(range(len(records)), size))
    chosen = set(held)
    return [r for i, r in enumerate(records) if i not in chosen], held


# ------------------------------------------------------------------------------ questions only
@dataclass(frozen=True)
class Question:
    """A question to answer (``predict``); ``answer`` is the expected value when the file has one."""

    question: str
    answer: float | str | None = None
    context: tuple[Turn, ...] = ()


QUESTION_FORMATS = (
    ".txt (one question per line), .json (a list of questions, [question, answer] pairs or objects "
    "with a 'question' field), .jsonl (one such object per line), or a training file in any format (.csv, .parquet too)"
)


def load_questions(path: str | Path) -> list[Question]:
    """Questions to answer from a ``.txt``, ``.json`` or ``.jsonl`` file; answers are optional.

    The training formats are accepted as they are (so a validation file can be predicted and
    scored), plus plain question lists, because a user asking questions has no answers yet.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"questions file not found: {path}. Fix: check the path (relative paths are from the current directory)."
        )
    if path.suffix in (".csv", ".parquet") or _is_training_file(path):
        from sft_lightning.data.files import read_located_records  # imports this module

        records = [record for _, record in read_located_records(path) if record.question]
        questions = [Question(r.question, r.answer, r.context) for r in records]
        if not questions:
            raise DataError(f"{path}: contains no questions. Fix: add at least one question.")
        return questions
    text = read_text_file(path)
    if path.suffix == ".txt":
        questions = [
            Question(line.strip())
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    elif path.suffix == ".json":
        data = _parse_json(text, f"{path}")
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of questions, got {type(data).__name__}. Fix: use {QUESTION_FORMATS}.")
        questions = [_question_item(item, f"{path}: record {index}") for index, item in enumerate(data)]
    elif path.suffix == ".jsonl":
        questions = [
            _question_item(_parse_json(line, f"{path}: line {lineno}", one_line=True), f"{path}: line {lineno}")
            for lineno, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    else:
        raise DataError(f"{path}: unknown questions format '{path.suffix}'. Fix: use {QUESTION_FORMATS}.")
    if not questions:
        raise DataError(f"{path}: contains no questions. Fix: add at least one question.")
    return questions


def _is_training_file(path: Path) -> bool:
    """A .json/.jsonl whose first record is an object of a training format without a 'question' field (prompt/completion,
    messages, Alpaca): read as training records, its answers scored."""
    if path.suffix not in (".json", ".jsonl"):
        return False
    text = read_text_file(path).lstrip()
    try:
        first = json.loads(text.splitlines()[0]) if path.suffix == ".jsonl" and text else json.loads(text or "null")
    except json.JSONDecodeError:
        return False
    if isinstance(first, list) and first and path.suffix == ".json":
        first = first[0]
    if not isinstance(first, dict) or "question" in first:
        return False
    from sft_lightning.data.formats import FORMATS  # imports this module

    return any(all(column in first for column in fmt.required) for fmt in FORMATS if fmt.name != "text")  # text: no question


def _parse_json(text: str, where: str, one_line: bool = False) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f", column {exc.colno}" if one_line else f": invalid JSON at line {exc.lineno}, column {exc.colno}"
        what = ": invalid JSON" if one_line else ""
        raise DataError(f"{where}{at}{what}: {exc.msg}. Fix: correct the file there.") from None


def _question_item(item: object, where: str) -> Question:
    """A question from a string, a ``[question, answer]`` pair or a ``{"question": ...}`` object."""
    if isinstance(item, str):
        question, answer = item, None
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        question, answer = item
    elif isinstance(item, dict) and "question" in item:
        question, answer = item["question"], item.get("answer")
    else:
        raise DataError(
            f"{where}: expected a question string, a [question, answer] pair or an object with a 'question' field, "
            f"got {_short(item)}. Fix: use {QUESTION_FORMATS}."
        )
    if answer is None:
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: question must be a non-empty string, got {_short(question)}.")
        return Question(question.strip())
    record = make_record(question, answer, where)
    return Question(record.question, record.answer)
