"""The validation plan: a cost model fitted to a few timed batches, and cuts that keep validation within its share."""

from __future__ import annotations

import math

import pytest
import torch

from sft_lightning.budget.validation_estimate import (
    MIN_GENERATED_QUESTIONS,
    Ending,
    Shape,
    StepClock,
    ValidationCost,
    answer_lengths,
    cycled,
    generated_steps,
    loss_tokens,
    measure_validation_cost,
    plan_validation,
    spread,
    wilson_interval,
)
from sft_lightning.data.batching import EvalCollator, Example
from sft_lightning.evaluation.generation import greedy_generate
from sft_lightning.loss import chunked_loss_sum, supervised_loss_sum
from sft_lightning.models.anatomy import causal_lm_parts
from sft_lightning.models.tiny import build_tiny_llama


def test_the_fit_recovers_the_constants_from_timed_steps() -> None:
    """Steps of 48 rows down to 1 (rows leave as they finish) separate a step's fixed cost from its cost per row."""
    true = ValidationCost(per_token=0.001, per_prompt_token=0.0004, per_step=0.05, per_row_step=0.002)
    steps = [(rows, true.per_step + true.per_row_step * rows) for rows in (48, 48, 30, 12, 3, 1, 16, 16, 5)]
    prefills = [(16 * 20, 16 * 20 * 0.0004), (48 * 25, 48 * 25 * 0.0004)]
    fitted = ValidationCost.fit(true.per_token, prefills, steps)
    assert (fitted.per_token, fitted.per_prompt_token) == (pytest.approx(0.001), pytest.approx(0.0004))
    assert (fitted.per_step, fitted.per_row_step) == (pytest.approx(0.05), pytest.approx(0.002))
    # and so it predicts a 200-row batch it never timed
    big = ([Shape(30, 70)] * 200, [26] * 200)
    assert fitted.batch_seconds(*big, with_loss=True) == pytest.approx(true.batch_seconds(*big, with_loss=True))


def test_one_batch_whose_rows_all_end_together_still_fits() -> None:
    """Steps of one row count only: no intercept can be told apart, so the time goes per row."""
    fitted = ValidationCost.fit(0.0, [], [(16, 0.8)] * 5)
    assert fitted.per_step == 0 and fitted.per_row_step == pytest.approx(0.05)
    assert fitted.per_prompt_token == 0.0  # no prefill timed: the loss forward's constant


@pytest.mark.parametrize(
    ("steps", "per_step", "per_row_step"),
    [
        ([(1, 2.0), (48, 1.0)], 1.5, 0.0),  # times that fall with more rows: a fixed cost alone
        ([(1, 0.0), (10, 0.5), (20, 1.0)], 0.0, None),  # a negative intercept: a cost per row alone
    ],
)
def test_constants_never_go_negative(steps: list[tuple[int, float]], per_step: float, per_row_step: float | None) -> None:
    fitted = ValidationCost.fit(0.0, [(10, -1.0)], steps)
    assert fitted.per_step == pytest.approx(per_step) and fitted.per_row_step >= 0 and fitted.per_prompt_token == 0
    if per_row_step is None:
        assert fitted.per_row_step == pytest.approx(sum(r * t for r, t in steps) / sum(r * r for r, _ in steps))


def test_a_batch_is_prefill_decoding_and_the_loss_only_where_asked() -> None:
    cost = ValidationCost(per_token=0.01, per_prompt_token=0.02, per_step=1.0, per_row_step=0.1)
    shapes, lengths = [Shape(10, 30), Shape(20, 40)], [5, 3]
    # prefill 2 x 20 tokens, 5 steps, 8 row-steps; the loss forward 2 x 40 tokens
    assert cost.batch_seconds(shapes, lengths, with_loss=False) == pytest.approx(0.8 + 5 + 0.8)
    assert cost.batch_seconds(shapes, lengths, with_loss=True) == pytest.approx(0.8 + 5 + 0.8 + 0.8)
    assert cost.batch_seconds([], [], with_loss=True) == 0
    assert cycled([1, 2, 3], 2, 4) == [3, 1, 2, 3]


def test_the_loss_forward_is_counted_in_chunks_padded_to_their_own_longest_row() -> None:
    shapes = [Shape(5, 10)] * 32 + [Shape(5, 40)] * 8
    assert loss_tokens(shapes) == 32 * 10 + 8 * 40
    assert loss_tokens(shapes, rows=40) == 40 * 40


def test_the_chunked_loss_is_the_whole_batchs_loss() -> None:
    torch.manual_seed(0)
    model = build_tiny_llama().eval()
    ids = torch.randint(3, 60, (40, 12))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0  # right padding every row has
    mask[:5, 6:] = 0
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, :3] = -100
    with torch.no_grad():
        whole = supervised_loss_sum(model, ids, mask, labels)
        chunked = chunked_loss_sum(model, ids, mask, labels, rows=16)
    assert chunked[1] == whole[1]
    assert chunked[0] == pytest.approx(float(whole[0]), rel=1e-5)


def _sets() -> dict[str, list[Shape]]:
    return {"val": [Shape(20, 50)] * 300, "val_unseen": [Shape(20, 50)] * 200, "handwritten": [Shape(20, 50)] * 286}


# 0.1 s a question: one row-step per question, and nothing else
LINEAR = ValidationCost(per_token=0.0, per_prompt_token=0.0, per_step=0.0, per_row_step=0.1)


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


def test_the_step_clock_times_every_forward_with_the_rows_it_ran() -> None:
    model = build_tiny_llama().eval()
    ids = torch.randint(3, 60, (3, 5))
    body, _ = causal_lm_parts(model)
    with torch.no_grad(), StepClock(body) as clock:
        greedy_generate(model, ids, torch.ones_like(ids), 6, eos_token_id=-1, stop_lengths=[1, 3, 5])
    intervals = clock.intervals()
    assert [rows for rows, _ in intervals] == [3, 2, 2, 1, 1]  # the prefill, then rows leave as they reach their end
    assert all(seconds > 0 for _, seconds in intervals)
    assert not body._forward_pre_hooks  # the clock is gone afterwards
