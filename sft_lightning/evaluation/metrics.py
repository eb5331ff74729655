"""Answer parsing and the two validation metrics: accuracy and answer rate (answered: the task's parse found an answer).

States are sum-reduced counts, so the metrics are exact under DDP (no mean of means).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor
from torchmetrics import Metric

from sft_lightning.data.prompt import ANSWER_CLOSE, ANSWER_OPEN

MAIN_VAL_SET = "val"  # the validation set whose metrics are val/loss, val/accuracy, val/answer_rate

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE_RE = re.compile(r"\s*(" + _NUMBER + r")\s*(?:" + re.escape(ANSWER_CLOSE) + r"|$|\s)")


def parse_answer(text: str) -> float | None:
    """The number inside the first ``<answer>...</answer>`` tag, or None.

    The closing tag may be missing only at the very end (generation cut at max_new_tokens).
    Thousands separators are accepted; non-finite values are rejected.
    """
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return None
    match = _VALUE_RE.match(text, start + len(ANSWER_OPEN))
    if match is None:
        return None
    try:
        value = float(match.group(1).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_FINAL_MARK = re.compile(r"####\s*(" + _NUMBER + r")")
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER)


def parse_final_number(text: str) -> float | None:
    """The number a free-form answer gives: the ``<answer>`` tag's, else GSM8K's ``#### N``, else the last number."""
    value = parse_answer(text)
    if value is not None:
        return value
    marks = _FINAL_MARK.findall(text)
    candidates = marks or _ANY_NUMBER.findall(text)
    for candidate in reversed(candidates):
        try:
            number = float(candidate.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    return None


def normalize_answer(text: str) -> str:
    """Text answers compare without case, surrounding whitespace or quotes, inner runs of spaces and final punctuation."""
    text = " ".join(text.casefold().split())
    return text.strip(" \"'`").rstrip(".!?;:,").strip(" \"'`")


def text_scores(outputs: list[str], finished: list[bool], expected: list[str]) -> tuple[Tensor, Tensor]:
    """``(correct, answered)`` of text answers: answered = non-empty and finished before the token limit;
    correct = answered and equal to the reference after ``normalize_answer``."""
    answered = [bool(out.strip()) and done for out, done in zip(outputs, finished)]
    correct = [ok and normalize_answer(out) == normalize_answer(ref) for out, ok, ref in zip(outputs, answered, expected)]
    return torch.tensor(correct, dtype=torch.bool), torch.tensor(answered, dtype=torch.bool)


def numeric_scores(preds: Tensor, target: Tensor, relative_tolerance: float) -> tuple[Tensor, Tensor]:
    """``(correct, answered)`` of numeric answers (NaN: none found): within ``relative_tolerance`` of the target."""
    preds, target = _as_pair(preds, target)
    answered = torch.isfinite(preds)
    correct = answered & torch.isfinite(target) & ((preds - target).abs() <= relative_tolerance * target.abs())
    return correct, answered


def parse_answers(texts: list[str]) -> Tensor:
    """Parsed values as a float64 tensor, NaN where nothing parseable was found."""
    values = [parse_answer(t) for t in texts]
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


class AnswerAccuracy(Metric):
    """Share of outputs whose parsed answer is within ``relative_tolerance`` of the truth.

    ``|pred - target| <= tol * |target|``: an expected 0 therefore needs an exact 0; a NaN
    prediction (unparsed) or a non-finite target never counts as correct.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, relative_tolerance: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(relative_tolerance) and relative_tolerance >= 0):
            raise ValueError(f"relative_tolerance must be a finite number >= 0, got {relative_tolerance!r}")
        self.relative_tolerance = relative_tolerance
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor | None, target: Tensor | None = None, correct: Tensor | None = None) -> None:
        """Parsed numbers against ``target``; or, with ``correct`` given, rows already scored (text answers)."""
        if correct is None:
            correct, _ = numeric_scores(preds, target, self.relative_tolerance)
        self.correct += correct.sum().to(self.correct.device)
        self.total += correct.numel()

    def compute(self) -> Tensor:
        return _ratio(self.correct, self.total)


class AnswerRate(Metric):
    """Share of outputs that contained a parseable answer (NaN marks 'none found')."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    answered: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("answered", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor | None, answered: Tensor | None = None) -> None:
        """``preds``: parsed numbers (NaN: none); or, with ``answered`` given, that per row (``preds`` ignored)."""
        if answered is None:
            answered = torch.isfinite(torch.as_tensor(preds, dtype=torch.float64).flatten())
        self.answered += answered.sum().to(self.answered.device)
        self.total += answered.numel()

    def compute(self) -> Tensor:
        return _ratio(self.answered, self.total)


def _as_pair(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    # float64 so that large integers (e.g. bytes in a GB) compare without fp32 rounding.
    preds = torch.as_tensor(preds, dtype=torch.float64).flatten()
    target = torch.as_tensor(target, dtype=torch.float64).flatten().to(preds.device)
    if preds.shape != target.shape:
        raise ValueError(f"preds and target must have the same number of elements, got {preds.numel()} and {target.numel()}")
    return preds, target


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # An empty validation set reports 0 rather than NaN so it can never pass for a good score.
    return num.double() / den if den > 0 else torch.tensor(0.0, dtype=torch.float64)


class AnswerMetrics(torch.nn.Module):
    """Accuracy and answer rate of one validation set, updated from the same parsed answers."""

    def __init__(self, relative_tolerance: float = 0.05) -> None:
        super().__init__()
        self.accuracy = AnswerAccuracy(relative_tolerance=relative_tolerance)
        self.answer_rate = AnswerRate()

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.accuracy.update(preds, target)
        self.answer_rate.update(preds)

    def update_rows(self, correct: Tensor, answered: Tensor) -> None:
        """Rows already scored (``numeric_scores``, ``text_scores``)."""
        self.accuracy.update(None, correct=correct)
        self.answer_rate.update(None, answered)

    def compute(self) -> dict[str, Tensor]:
        return {"accuracy": self.accuracy.compute(), "answer_rate": self.answer_rate.compute()}

    def reset(self) -> None:
        self.accuracy.reset()
        self.answer_rate.reset()
