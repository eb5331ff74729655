"""Reading and validating question/answer records, before any model or tokenizer is loaded.

Every bad input ends in one ``DataError`` naming the file, the record and the fix, because a
typo in record 9,000 should cost a second, not a model load and an hour of training.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


class DataError(ValueError):
    """Input data is unusable; the message names the file/record and what to do."""


@dataclass(frozen=True)
class QARecord:
    """A question, the answer it is scored against, and optionally the exact text to train on
    (a worked answer); without one the target is the bare ``<answer>`` tag.

    ``origin`` says where a record read from a file is in it (``"data/train.jsonl line 17"``), so a
    report about a bad sample can send the user to it; None for generated records. It is left out
    of equality and hashing: the same question and answer are the same record wherever they came from.
    """

    question: str
    answer: float
    target: str | None = None
    origin: str | None = field(default=None, compare=False)


def normalize_question(text: str) -> str:
    """Key used for de-duplication: case, spacing and final punctuation ignored."""
    return " ".join(text.casefold().split()).rstrip(".?! ")


def load_records(path: str | Path, allow_conflicts: bool = False) -> list[QARecord]:
    """Records from a ``.json`` list of ``[question, answer]`` pairs or a ``.jsonl`` file of
    ``{"question": ..., "answer": ...}`` objects (one per line).

    Each record's ``origin`` names the file (the path as given, ``~`` expanded) and the place in it:
    ``"PATH line N"`` for .jsonl (N 1-based, the line number an editor shows; blank lines count) and
    ``"PATH item N"`` for .json (N 1-based: the N-th element of the list).

    The same question twice with different answers is an error naming both records (a model
    cannot learn both, and one of them is a data bug); ``allow_conflicts`` turns it into a warning.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}. Fix: check the path (relative paths are from the current directory).")
    text = read_text_file(path)
    if path.suffix == ".jsonl":
        located = list(_jsonl_records(text, path))
    elif path.suffix == ".json":
        located = list(_json_records(text, path))
    else:
        raise DataError(f"{path}: unknown data format '{path.suffix}'. Fix: use .json (list of [question, answer]) or .jsonl.")
    if not located:
        raise DataError(f"{path}: contains no records. Fix: add at least one question/answer pair.")
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
        if math.isclose(record.answer, record0.answer, rel_tol=1e-6, abs_tol=1e-12):
            continue
        message = (
            f"{where} asks the question of {where0.split(': ', 1)[-1]} again ({record.question[:60]!r}) but answers "
            f"{record.answer:g} instead of {record0.answer:g}"
        )
        if not allow:
            raise DataError(f"{message}. Fix: keep one answer (or pass --data.allow_conflicting_answers true to train on both).")
        warnings.warn(f"{message}; training on both (data.allow_conflicting_answers)", stacklevel=3)


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


def _json_records(text: str, path: Path) -> Iterable[tuple[str, QARecord]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. Fix: correct the file there."
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of [question, answer] pairs, got {type(data).__name__}.")
    for index, item in enumerate(data):
        where = f"{path}: record {index}"
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise DataError(f"{where} is not a [question, answer] pair: {_short(item)}. Fix: write it as [\"question\", number].")
        yield where, replace(make_record(item[0], item[1], where), origin=f"{path} item {index + 1}")


def _jsonl_records(text: str, path: Path) -> Iterable[tuple[str, QARecord]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}, column {exc.colno}: invalid JSON: {exc.msg}. Fix: one JSON object per line.") from None
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object with 'question' and 'answer' fields, got {_short(item)}.")
        missing = [key for key in ("question", "answer") if key not in item]
        if missing:
            raise DataError(
                f"{where}: missing field {', '.join(repr(m) for m in missing)}. "
                'Fix: each line needs {"question": ..., "answer": ...}.'
            )
        yield where, replace(make_record(item["question"], item["answer"], where), origin=f"{path} line {lineno}")


def make_record(question: object, answer: object, where: str = "record") -> QARecord:
    """A validated record: non-empty question, finite numeric answer (numbers or numeric strings)."""
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question must be a non-empty string, got {_short(question)}.")
    value = _to_number(answer)
    if value is None:
        raise DataError(f"{where}: answer must be a number, got {_short(answer)}. Fix: correct or remove the record.")
    if not math.isfinite(value):
        raise DataError(f"{where}: answer must be finite, got {answer!r}. Fix: remove the record or correct its answer.")
    return QARecord(question.strip(), value)


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
            "Fix: give --data.val_file, or a val_size smaller than the training file."
        )
    return list(records[:-val_size]), list(records[-val_size:])


# ------------------------------------------------------------------------------ questions only
@dataclass(frozen=True)
class Question:
    """A question to answer (``predict``); ``answer`` is the expected value when the file has one."""

    question: str
    answer: float | None = None


QUESTION_FORMATS = (
    ".txt (one question per line), .json (a list of questions, [question, answer] pairs or objects "
    "with a 'question' field) or .jsonl (one such object per line)"
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
