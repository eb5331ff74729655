"""Text answers: normalised exact match for accuracy, non-empty and finished outputs for the answer rate; numbers
as before; ``predict`` and ``ask`` show a text answer as text (``sft_lightning.evaluation.scoring``, ``metrics``)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from sft_lightning.cli.ask import print_answers
from sft_lightning.evaluation.metrics import AnswerMetrics, normalize_answer, parse_final_number
from sft_lightning.evaluation.predict import make_predictions, print_predictions
from sft_lightning.evaluation.scoring import finished_rows, score_outputs
from sft_lightning.tasks.base import Task
from sft_lightning.tasks.own_data import OwnData


@pytest.mark.parametrize(("a", "b"), [("Paris", "paris"), ("  Paris.\n", "Paris"), ("New  York!", "new york"), ('"Lima"', "Lima")])
def test_normalisation_ignores_case_spaces_quotes_and_final_punctuation(a: str, b: str) -> None:
    assert normalize_answer(a) == normalize_answer(b)


def test_normalisation_keeps_what_changes_the_answer() -> None:
    assert normalize_answer("Paris, France") != normalize_answer("Paris")
    assert normalize_answer("3.5") != normalize_answer("35")


@pytest.mark.parametrize(
    ("text", "value"),
    [("<answer>12</answer> 7", 12.0), ("so 3+4 = 7\n#### 7", 7.0), ("He has 5 then 8 apples.", 8.0), ("1,200 m", 1200.0), ("none", None)],
)
def test_a_numeric_reference_reads_the_tag_then_gsm8k_then_the_last_number(text: str, value: float | None) -> None:
    assert parse_final_number(text) == value


def test_text_and_numbers_scored_row_by_row() -> None:
    outputs = ["paris.", "Berlin", "", "Madrid", "The answer is 48", "no idea"]
    finished = [True, True, True, False, True, True]
    references = ["Paris", "Rome", "Lima", "Madrid", 48.0, 10.0]
    scored = score_outputs(OwnData("unused.jsonl"), outputs, finished, references, 0.05)
    assert scored.correct.tolist() == [True, False, False, False, True, False]
    # empty and cut at the token limit are no answer; a number found is one
    assert scored.answered.tolist() == [True, True, False, False, True, False]
    assert scored.read == ["paris.", "Berlin", None, None, 48.0, None]
    metrics = AnswerMetrics(0.05)
    metrics.update_rows(scored.correct, scored.answered)
    result = metrics.compute()
    assert math.isclose(result["accuracy"].item(), 2 / 6) and math.isclose(result["answer_rate"].item(), 3 / 6)


def test_finished_rows_are_those_with_eos() -> None:
    assert finished_rows(torch.tensor([[5, 2, 2], [5, 6, 7]]), eos_token_id=2) == [True, False]


def test_predict_and_ask_show_a_text_answer_as_text(tmp_path: Path) -> None:
    rows = make_predictions([0, 1], ["Capital of Peru?", "Capital of Chile?"], ["Lima", "Santiago"], ["lima", None], 0.05,
                            OwnData("unused.jsonl"), [True, True])
    assert [(r.parsed, r.correct) for r in rows] == [("Lima", True), ("Santiago", None)]
    table = io.StringIO()
    print_predictions(rows, tmp_path / "p.jsonl", table)
    assert "Lima  Capital of Peru? -> 'Lima'  ok" in table.getvalue()
    shown = io.StringIO()
    print_answers(rows, shown)
    assert "answer    Santiago" in shown.getvalue() and "answer    56" not in shown.getvalue()


def test_the_shipped_task_still_reads_only_the_tag() -> None:
    rows = make_predictions([0], ["q"], ["6000 m"], [None], 0.05, Task(), [True])
    assert rows[0].parsed is None
