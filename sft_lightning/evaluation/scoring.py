"""Scoring generated answers against numbers or texts, row by row: one rule for validation, ``predict`` and ``ask``.

A number is correct within the relative tolerance; a text when equal after ``metrics.normalize_answer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sft_lightning.evaluation.metrics import numeric_scores, text_scores
from sft_lightning.tasks.base import Task


@dataclass
class Scored:
    """Per row: correct, answered, and the answer read from the output (a number, a text or None)."""

    correct: Tensor
    answered: Tensor
    read: list[float | str | None]


def score_outputs(
    task: Task, outputs: list[str], finished: Sequence[bool], references: Sequence[float | str | None], tolerance: float
) -> Scored:
    """Each output against its reference. Without one (``predict``, ``ask``) an output is read as a number, or, for a
    task with free-text answers (``Task.free_text``) where it gives none, as its text; it is never correct."""
    numbers = task.parse(outputs).tolist()
    # a row is read as text where its reference is a text, or it has none and the task answers in free text
    as_text = [isinstance(r, str) or (r is None and task.free_text and math.isnan(n)) for r, n in zip(references, numbers)]
    texts = task.parse_text(outputs) if any(as_text) else [""] * len(outputs)
    target = torch.tensor([r if isinstance(r, (int, float)) else math.nan for r in references], dtype=torch.float64)
    num_correct, num_answered = numeric_scores(torch.tensor(numbers, dtype=torch.float64), target, tolerance)
    txt_correct, txt_answered = text_scores(texts, list(finished), [r if isinstance(r, str) else "" for r in references])
    txt_correct &= torch.tensor([isinstance(r, str) for r in references], dtype=torch.bool)
    mask = torch.tensor(as_text, dtype=torch.bool)
    read: list[float | str | None] = [
        (text if ok else None) if t else (None if math.isnan(n) else n)
        for t, text, ok, n in zip(as_text, texts, txt_answered.tolist(), numbers)
    ]
    return Scored(torch.where(mask, txt_correct, num_correct), torch.where(mask, txt_answered, num_answered), read)


def finished_rows(new_ids: Tensor, eos_token_id: int) -> list[bool]:
    """Whether each generated row ended with EOS (not cut by the token limit)."""
    return (new_ids == eos_token_id).any(dim=1).tolist() if new_ids.numel() else [False] * new_ids.shape[0]
