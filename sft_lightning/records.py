"""Reading and validating question/answer records, before any model or tokenizer is loaded.

Every bad input ends in one ``DataError`` naming the file, the record and the fix, because a
typo in record 9,000 should cost a second, not a model load and an hour of training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Input data is unusable; the message names the file/record and what to do."""


@dataclass(frozen=True)
class QARecord:
    question: str
    answer: float


def load_records(path: str | Path) -> list[QARecord]:
    """Records from a ``.json`` list of ``[question, answer]`` pairs or a ``.jsonl`` file of
    ``{"question": ..., "answer": ...}`` objects (one per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}. Fix: check the path (relative paths are from the current directory).")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = list(_jsonl_records(text, path))
    elif path.suffix == ".json":
        records = list(_json_records(text, path))
    else:
        raise DataError(f"{path}: unknown data format '{path.suffix}'. Fix: use .json (list of [question, answer]) or .jsonl.")
    if not records:
        raise DataError(f"{path}: contains no records. Fix: add at least one question/answer pair.")
    return records


def _json_records(text: str, path: Path) -> Iterable[QARecord]:
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
        yield make_record(item[0], item[1], where)


def _jsonl_records(text: str, path: Path) -> Iterable[QARecord]:
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
        yield make_record(item["question"], item["answer"], where)


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
    text = path.read_text(encoding="utf-8")
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
