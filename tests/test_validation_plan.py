"""The validation plan: a cost model fitted to a few timed batches, and cuts that keep validation within its share."""

from __future__ import annotations

import math

import pytest
import torch

from sft_lightning.batching import EvalCollator, Example
from sft_lightning.generation import greedy_generate
from sft_lightning.tiny_model import build_tiny_llama
from sft_lightning.validation_plan import MIN_GENERATED_QUESTIONS, Shape, ValidationCost, cycled, plan_validation, wilson_interval
from sft_lightning.validation_timing import Ending, answer_lengths, generated_steps, measure_validation_cost, spread


def test_the_fit_recovers_the_decoding_constants_from_two_batches() -> None:
    true = ValidationCost(per_token=0.001, per_step=0.05, per_row_step=0.002)
    small = ([Shape(20, 50)] * 16, [30] * 16)
    large = ([Shape(25, 60)] * 48, [20, 40] * 24)
    timed = [(shapes, lengths, true.batch_seconds(shapes, lengths, with_loss=False)) for shapes, lengths in (small, large)]
    fitted = ValidationCost.fit(true.per_token, timed)
    assert fitted.per_step == pytest.approx(0.05) and fitted.per_row_step == pytest.approx(0.002)
    # and so it predicts a 200-row batch it never timed
    big = ([Shape(30, 70)] * 200, [26] * 200)
    assert fitted.batch_seconds(*big, with_loss=True) == pytest.approx(true.batch_seconds(*big, with_loss=True))


def test_constants_never_go_negative() -> None:
    # times that fall with more rows would give a negative per-row constant: one constant is kept instead
    timed = [([Shape(10, 20)] * 16, [10] * 16, 2.0), ([Shape(10, 20)] * 48, [10] * 48, 1.0)]
    fitted = ValidationCost.fit(0.0, timed)
    assert fitted.per_step >= 0 and fitted.per_row_step >= 0


def test_a_batch_is_prefill_decoding_and_the_loss_only_where_asked() -> None:
    cost = ValidationCost(per_token=0.01, per_step=1.0, per_row_step=0.1)
    shapes, lengths = [Shape(10, 30), Shape(20, 40)], [5, 3]
    # prefill 2 x 20 tokens, 5 steps, 8 row-steps; the loss forward 2 x 40 tokens
    assert cost.batch_seconds(shapes, lengths, with_loss=False) == pytest.approx(0.4 + 5 + 0.8)
    assert cost.batch_seconds(shapes, lengths, with_loss=True) == pytest.approx(0.4 + 5 + 0.8 + 0.8)
    assert cost.batch_seconds([], [], with_loss=True) == 0
    assert cycled([1, 2, 3], 2, 4) == [3, 1, 2, 3]


def _sets() -> dict[str, list[Shape]]:
    return {"val": [Shape(20, 50)] * 300, "val_unseen": [Shape(20, 50)] * 200, "handwritten": [Shape(20, 50)] * 286}


# 0.1 s a question: one row-step per question, and nothing else
LINEAR = ValidationCost(per_token=0.0, per_step=0.0, per_row_step=0.1)


def test_everything_fits_nothing_is_cut() -> None:
    plan = plan_validation(_sets(), ["val", "val_unseen"], LINEAR, [1], 200, "val", max_seconds=1000)
    assert plan.sizes == {"val": 300, "val_unseen": 200, "handwritten": 286} and not plan.cut
    assert plan.seconds == pytest.approx(78.6)


def test_generated_sets_are_cut_equally_and_the_handwritten_set_stays_whole() -> None:
    plan = plan_validation(_sets(), ["val", "val_unseen"], LINEAR, [1], 200, "val", max_seconds=60)
    assert plan.cut
    assert plan.sizes == {"val": 157, "val_unseen": 157, "handwritten": 286}  # 0.1 * (157 + 157 + 286) = 60
    assert plan.seconds <= 60


def test_never_below_the_minimum_even_when_it_does_not_fit() -> None:
    plan = plan_validation(_sets(), ["val", "val_unseen"], LINEAR, [1], 200, "val", max_seconds=5)
    assert plan.sizes == {"val": MIN_GENERATED_QUESTIONS, "val_unseen": MIN_GENERATED_QUESTIONS, "handwritten": 286}


def test_a_set_smaller_than_the_minimum_stays_as_it_is() -> None:
    sets = {"val": [Shape(5, 9)] * 40, "handwritten": [Shape(5, 9)] * 286}
    plan = plan_validation(sets, ["val"], LINEAR, [1], 200, "val", max_seconds=5)
    assert plan.sizes == {"val": 40, "handwritten": 286} and not plan.cut


def test_without_generated_sets_or_limit_nothing_is_cut() -> None:
    full = {"val": 300, "val_unseen": 200, "handwritten": 286}
    assert plan_validation(_sets(), [], LINEAR, [1], 200, "val", max_seconds=1).sizes == full
    assert plan_validation(_sets(), ["val"], LINEAR, [1], 200, "val", max_seconds=None).sizes == full


@pytest.mark.parametrize(("k", "n", "low", "high"), [(50, 100, 0.404, 0.596), (0, 100, 0.0, 0.037), (100, 100, 0.963, 1.0)])
def test_wilson_interval(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(low, abs=1e-3) and got[1] == pytest.approx(high, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


class _Ex:
    def __init__(self, answer_ids: tuple[int, ...]) -> None:
        self.answer_ids = answer_ids


def test_answer_lengths_stop_where_the_calculator_takes_over() -> None:
    examples = [_Ex((1, 2, 3, 9, 5, 6)), _Ex((1, 2))]
    trigger = lambda ids: [5, 6] if ids and ids[-1] == 9 else None  # noqa: E731
    assert answer_lengths(examples, None) == [6, 2]
    assert answer_lengths(examples, trigger) == [4, 2]


def test_generated_steps_end_at_eos_at_the_calculator_or_at_the_limit() -> None:
    eos = 0
    trigger = lambda ids: [7, eos] if ids and ids[-1] == 9 else None  # noqa: E731
    new_ids = torch.tensor([[4, 5, eos, eos, eos], [4, 9, 7, eos, eos], [4, 4, 4, 4, 4]])
    assert generated_steps(new_ids, Ending(eos, None), max_new_tokens=5) == [3, 4, 5]
    assert generated_steps(new_ids, Ending(eos, trigger), max_new_tokens=5) == [3, 2, 5]


def test_a_trained_model_is_timed_with_the_lengths_it_really_generates() -> None:
    """``lengths`` None: the larger batch runs to its own ends, and those ends are the plan's lengths."""
    torch.manual_seed(0)
    model = build_tiny_llama().eval()
    prompts = [Example(prompt_ids=tuple(range(3, 6 + i % 5)), answer_ids=(7, 8, 2), question=f"q{i}", answer=1.0) for i in range(60)]
    collate = EvalCollator(pad_token_id=0)
    eos, max_new = 2, 12
    with torch.no_grad():
        cost, lengths = measure_validation_cost(model, collate, prompts, None, max_new, lambda b: b, Ending(eos, None))
        batch = collate(spread(prompts, 48))
        expected = generated_steps(greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], max_new, eos), Ending(eos, None), max_new)
    assert lengths == expected and len(lengths) == 48
    assert cost.per_row_step > 0 or cost.per_step > 0
    with pytest.raises(ValueError, match="needs the rows' lengths"):
        measure_validation_cost(model, collate, prompts, None, max_new, lambda b: b)


def test_spread_takes_evenly_from_short_and_long() -> None:
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread([1, 2], 5) == [1, 2]
    assert math.isclose(len(spread(list(range(1000)), 48)), 48)
