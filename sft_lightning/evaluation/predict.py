"""``sft-lightning predict``: answer a file of questions and keep the answers in ``predictions.jsonl``, in file order.

Prompts go through the same ``format_prompt`` and ``greedy_generate`` as validation: a prediction is what validation would score.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from sft_lightning.atomic import atomic_file
from sft_lightning.data.records import show_answer
from sft_lightning.evaluation.metrics import AnswerAccuracy
from sft_lightning.evaluation.scoring import score_outputs
from sft_lightning.tasks.base import Task

PREDICTIONS_FILE = "predictions.jsonl"
TABLE_ROWS = 20  # rows printed; the file holds all of them


@dataclass  # not frozen: Lightning's apply_to_collection rebuilds predict_step outputs
class Prediction:
    """One answered question: a row of ``predictions.jsonl``; ``parsed`` is the answer read (a number or a text)."""

    index: int
    question: str
    output: str
    parsed: float | str | None
    expected: float | str | None = None
    correct: bool | None = None


def answer_is_correct(parsed: float | None, expected: float, relative_tolerance: float) -> bool:
    """The validation rule (``AnswerAccuracy``) for one numeric answer, so both always agree."""
    metric = AnswerAccuracy(relative_tolerance=relative_tolerance)
    metric.update(torch.tensor([math.nan if parsed is None else parsed]), torch.tensor([expected]))
    return bool(metric.compute() == 1.0)


def make_predictions(
    indices: Sequence[int],
    questions: Sequence[str],
    outputs: Sequence[str],
    expected: Sequence[float | str | None],
    relative_tolerance: float,
    task: Task | None = None,
    finished: Sequence[bool] | None = None,
) -> list[Prediction]:
    """Rows for one batch, read and scored as validation does (``scoring.score_outputs``; by default the
    ``<answer>`` tag), scored where the file gave an answer."""
    finished = [True] * len(outputs) if finished is None else finished
    scored = score_outputs(task or Task(), list(outputs), finished, list(expected), relative_tolerance)
    rows = []
    for index, question, text, target, read, ok in zip(indices, questions, outputs, expected, scored.read, scored.correct.tolist()):
        rows.append(Prediction(index, question, text, read, target, None if target is None else bool(ok)))
    return rows


def show_read(value: float | str | None) -> str:
    """An answer read from an output, for a table: a number in short form, a text as it is."""
    return "-" if value is None else (f"{value:.10g}" if isinstance(value, float) else value)


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction to ``<run dir>/predictions.jsonl`` and prints a table.

    Under DDP each rank writes ``predictions.rank<N>.jsonl`` for its share of the questions.
    """

    def __init__(self, output_dir: str | None = None, stream: TextIO | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.stream = stream
        self.rows: list[Prediction] = []
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []
        # resolved here on every rank: trainer.log_dir broadcasts
        self._dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.rows.extend(prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.sort(key=lambda row: row.index)
        name = PREDICTIONS_FILE if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.jsonl"
        self.path = write_jsonl_atomic(self._dir / name, [asdict(row) for row in self.rows])
        if trainer.is_global_zero:
            print_predictions(self.rows, self.path, self.stream or sys.stdout)


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """One JSON object per line, written atomically (``sft_lightning.atomic``)."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def print_predictions(rows: Sequence[Prediction], path: Path, stream: TextIO) -> None:
    """The first rows as a table, then counts (and accuracy when the file had answers)."""
    lines = [f"==== sft-lightning predict: {len(rows)} questions ====", f"{'#':>4}  {'answer':>12}  question -> output"]
    for row in rows[:TABLE_ROWS]:
        mark = "" if row.correct is None else ("  ok" if row.correct else f"  (expected {show_answer(row.expected)})")
        lines.append(f"{row.index:>4}  {_clip(show_read(row.parsed), 12):>12}  {_clip(row.question, 50)} -> {row.output!r}{mark}")
    if len(rows) > TABLE_ROWS:
        lines.append(f"      ... {len(rows) - TABLE_ROWS} more in the file")
    answered = sum(row.parsed is not None for row in rows)
    lines.append(f"{'answered':<16} {answered}/{len(rows)}")
    scored = [row for row in rows if row.correct is not None]
    if scored:
        correct = sum(bool(row.correct) for row in scored)
        lines.append(f"{'accuracy':<16} {correct / len(scored):.4f} ({correct}/{len(scored)} with an expected answer)")
    lines.append(f"{'predictions':<16} {path}")
    print("\n".join(lines), file=stream, flush=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
