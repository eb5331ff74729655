"""The formats people's files already have (TRL messages, prompt/completion and text; Alpaca; question/answer, GSM8K),
detected from the columns; each row becomes a ``QARecord``, scored against ``records.reference``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_lightning.data.records import DataError, QARecord, Turn, _short, make_record, reference

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DataFormat:
    """A format: its name, the columns it needs and those it may have."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def describe(self) -> str:
        extra = f" (+ optional {', '.join(self.optional)})" if self.optional else ""
        return f"{self.name}: {'/'.join(self.required)}{extra}"


# Detection order: the first whose required columns a row has (a row with messages and text is conversational).
FORMATS = (
    DataFormat("messages", ("messages",)),
    DataFormat("prompt/completion", ("prompt", "completion")),
    DataFormat("alpaca", ("instruction", "output"), ("input",)),
    DataFormat("question/answer", ("question", "answer")),
    DataFormat("text", ("text",)),
)
ACCEPTED = "; ".join(f.describe() for f in FORMATS) + "; or a .json list of [question, answer] pairs"


def detect_format(row: Mapping[str, Any], path: Path | str) -> DataFormat:
    """The format whose required columns ``row`` has, or one error naming the file, the columns and the formats."""
    for fmt in FORMATS:
        if all(column in row for column in fmt.required):
            return fmt
    partial = next((f for f in FORMATS if any(c in row for c in f.required) and len(f.required) > 1), None)
    missing = "" if partial is None else f"missing field {', '.join(repr(c) for c in partial.required if c not in row)}; "
    raise DataError(
        f"{path}: {missing}no known format fits the columns {sorted(row)}. Formats accepted: {ACCEPTED}. "
        "Fix: rename the columns to one of these."
    )


def row_record(row: Mapping[str, Any], fmt: DataFormat, where: str) -> QARecord:
    """One row of a detected format as a record (every row of a file must have the format's columns)."""
    missing = [column for column in fmt.required if column not in row or row[column] is None]
    if missing:
        unit = next((u for u in ("line", "row") if f": {u} " in where), "record")
        fields = ", ".join(f'"{column}": ...' for column in fmt.required)
        raise DataError(f"{where}: missing field {', '.join(repr(m) for m in missing)}. Fix: each {unit} needs {{{fields}}}.")
    if fmt.name == "question/answer":
        return make_record(row["question"], row["answer"], where)
    if fmt.name == "text":
        text = _text(row["text"], "text", where)
        return QARecord("", None, text)
    if fmt.name == "messages":
        return conversation_record(row["messages"], where)
    if fmt.name == "alpaca":
        extra = row.get("input")
        extra = "" if extra is None else _text(extra, "input", where, allow_empty=True)
        prompt = _text(row["instruction"], "instruction", where) + (f"\n\n{extra}" if extra else "")
        return _completed(prompt, _text(row["output"], "output", where), where)
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, (list, tuple)) and isinstance(completion, (list, tuple)):  # TRL's conversational form
        return conversation_record([*prompt, *completion], where)
    return _completed(_text(prompt, "prompt", where), _text(completion, "completion", where), where)


def pair_record(item: Any, where: str) -> QARecord:
    """A ``[question, answer]`` pair of a .json list."""
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise DataError(f"{where} is not a [question, answer] pair: {_short(item)}. Fix: write it as [\"question\", answer].")
    return make_record(item[0], item[1], where)


def conversation_record(messages: Any, where: str) -> QARecord:
    """A TRL ``messages`` list: the last turn is the assistant's answer (scored), the turn before it the question,
    the turns before that the context (their assistant turns are trained on too)."""
    if not isinstance(messages, (list, tuple)) or len(messages) < 2:
        raise DataError(f"{where}: messages must be a list of at least a user and an assistant turn, got {_short(messages)}.")
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise DataError(
                f"{where}: message {index} must be {{\"role\": one of {', '.join(ROLES)}, \"content\": text}}, got {_short(message)}."
            )
        turns.append((str(message["role"]), str(message["content"])))
    if turns[-1][0] != "assistant" or turns[-2][0] != "user":
        raise DataError(
            f"{where}: a conversation must end with a user turn and the assistant's answer, got roles "
            f"{[role for role, _ in turns]}. Fix: end each conversation with the reply to train on and score."
        )
    question, answer = turns[-2][1], turns[-1][1]
    record = _completed(question, answer, where)
    return QARecord(record.question, record.answer, record.target, None, tuple(turns[:-2]))


def _completed(prompt: str, completion: str, where: str) -> QARecord:
    """A prompt and its completion: trained on the completion as written, scored against its reference."""
    if not prompt.strip():
        raise DataError(f"{where}: the prompt is empty. Fix: correct or remove the record.")
    value, _ = reference(completion, where)
    return QARecord(prompt.strip(), value, completion.strip())


def _text(value: Any, column: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or not (value.strip() or allow_empty):
        raise DataError(f"{where}: {column} must be a non-empty text, got {_short(value)}. Fix: correct or remove the record.")
    return value
