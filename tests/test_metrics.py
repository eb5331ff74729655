"""Tests for sft_lightning.evaluation.metrics: answer parsing and the accuracy / answer-rate metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from sft_lightning.evaluation.metrics import AnswerAccuracy, AnswerRate, parse_answer, parse_answers

NAN = math.nan
INF = math.inf

# compute() before update() is exactly what the empty-set tests exercise.
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")


# --------------------------------------------------------------------------------------------
# parse_answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>42</answer>", 42.0),
        ("The result is <answer>1609.344</answer>.", 1609.344),
        ("<answer>-3.5</answer>", -3.5),
        ("<answer>+7</answer>", 7.0),
        ("<answer>-.5</answer>", -0.5),
        ("<answer>.25</answer>", 0.25),
        ("<answer>0</answer>", 0.0),
        ("<answer>1.235e-05</answer>", 1.235e-05),
        ("<answer>1.000E+20</answer>", 1e20),
        ("<answer>-2e3</answer>", -2000.0),
        ("<answer>1,234</answer>", 1234.0),
        ("<answer>1,609,344</answer>", 1609344.0),
        ("<answer> 7 </answer>", 7.0),
        ("<answer>\n12\n</answer>", 12.0),
    ],
)
def test_parse_answer_tagged_numbers(text: str, expected: float) -> None:
    assert parse_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>42", 42.0),  # generation cut at max_new_tokens
        ("blah <answer>-0.001", -0.001),
        ("<answer>3.5e2", 350.0),
        ("<answer>12 and then the model kept talking", 12.0),  # whitespace ends the number
    ],
)
def test_parse_answer_missing_closing_tag_at_end(text: str, expected: float) -> None:
    assert parse_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "The answer is 42.",
        "answer: 42",
        "<answer></answer>",
        "<answer>abc</answer>",
        "<answer>forty-two</answer>",
        "<answer>42abc</answer>",
        "<answer>42abc",  # no closing tag and not at the end of a number
        "<answer>42kg</answer>",
        "<answer>1,23</answer>",  # malformed thousands separator
        "<answer>--5</answer>",
        "<answer>inf</answer>",
        "<answer>-inf</answer>",
        "<answer>Infinity</answer>",
        "<answer>nan</answer>",
        "<answer>NaN</answer>",
        "<answer>1e999</answer>",  # overflows to inf: non-finite is rejected
        "<answer>-1e400</answer>",
        "<ANSWER>42</ANSWER>",
    ],
)
def test_parse_answer_rejects_untagged_garbage_and_non_finite(text: str) -> None:
    assert parse_answer(text) is None


def test_parse_answer_first_tag_wins() -> None:
    assert parse_answer("<answer>1</answer> no wait <answer>2</answer>") == 1.0
    assert parse_answer("3 <answer>-4.5</answer><answer>6</answer> 7") == -4.5


def test_parse_answer_only_the_first_tag_counts() -> None:
    # A model that writes garbage in its answer tag has not answered, whatever follows.
    assert parse_answer("<answer>abc</answer> <answer>2</answer>") is None


def test_parse_answer_thousands_separator_with_decimals() -> None:
    assert parse_answer("<answer>12,345.67</answer>") == 12345.67


def test_parse_answers_tensor_with_nan_for_unparsed() -> None:
    values = parse_answers(["<answer>1.5</answer>", "nothing", "<answer>1,000</answer>", "<answer>nan</answer>"])
    assert values.dtype == torch.float64
    assert values.shape == (4,)
    assert values[0].item() == 1.5
    assert math.isnan(values[1].item())
    assert values[2].item() == 1000.0
    assert math.isnan(values[3].item())


def test_parse_answers_keeps_large_integers_exact() -> None:
    # float64: 2**53 - 1 would be rounded in float32.
    assert parse_answers(["<answer>9007199254740991</answer>"])[0].item() == 9007199254740991.0


# --------------------------------------------------------------------------------------------
# AnswerAccuracy
# --------------------------------------------------------------------------------------------


def _acc(preds, target, tol: float = 0.05) -> float:
    metric = AnswerAccuracy(relative_tolerance=tol)
    metric.update(torch.tensor(preds, dtype=torch.float64), torch.tensor(target, dtype=torch.float64))
    return metric.compute().item()


@pytest.mark.parametrize(
    ("pred", "target", "correct"),
    [
        (100.0, 100.0, True),
        (104.0, 100.0, True),
        (96.0, 100.0, True),
        (106.0, 100.0, False),
        (94.0, 100.0, False),
        (-100.0, -100.0, True),
        (-104.0, -100.0, True),
        (-96.0, -100.0, True),
        (-106.0, -100.0, False),
        (100.0, -100.0, False),  # sign matters
        (-100.0, 100.0, False),
        (0.0, 0.0, True),  # only an exact 0 matches an expected 0
        (-0.0, 0.0, True),
        (1e-12, 0.0, False),
        (-1e-300, 0.0, False),
        (1.0, 0.0, False),
        (NAN, 100.0, False),  # unparsed prediction
        (NAN, 0.0, False),
        (NAN, NAN, False),  # non-finite target: never correct
        (100.0, NAN, False),
        (INF, INF, False),
        (-INF, -INF, False),
        (1e300, INF, False),
        (INF, 100.0, False),
        (1e9 + 1, 1e9, True),
    ],
)
def test_accuracy_single_values(pred: float, target: float, correct: bool) -> None:
    assert _acc([pred], [target]) == (1.0 if correct else 0.0)


def test_accuracy_boundary_exactly_five_percent_is_correct() -> None:
    # |105 - 100| == 0.05 * 100 exactly (in binary too): the inequality is inclusive.
    assert _acc([105.0], [100.0]) == 1.0
    assert _acc([95.0], [100.0]) == 1.0
    assert _acc([-105.0], [-100.0]) == 1.0
    assert _acc([105.0001], [100.0]) == 0.0
    assert _acc([94.9999], [100.0]) == 0.0


def test_accuracy_tolerance_parameter_is_used() -> None:
    assert _acc([108.0], [100.0], tol=0.1) == 1.0
    assert _acc([108.0], [100.0], tol=0.05) == 0.0
    assert _acc([100.0, 100.0000001], [100.0, 100.0], tol=0.0) == 0.5


def test_accuracy_mixed_batch_fraction() -> None:
    preds = [1.0, 2.0, NAN, 0.0, -5.0, 7.0, 3.0, 1e6]
    target = [1.0, 3.0, 1.0, 0.0, -5.1, NAN, 3.1, 1.04e6]
    # correct: 1.0 (exact), 0.0 (exact zero), -5.0 vs -5.1 (2%), 3.0 vs 3.1 (3.2%), 1e6 vs 1.04e6 (3.8%)
    assert _acc(preds, target) == pytest.approx(5 / 8, abs=0.0)


def test_accuracy_accumulates_over_updates_and_resets() -> None:
    metric = AnswerAccuracy(relative_tolerance=0.05)
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))  # 2/2
    metric.update(torch.tensor([NAN]), torch.tensor([5.0]))  # 0/1
    metric.update(torch.tensor([10.0, 0.0, 3.0]), torch.tensor([20.0, 0.0, 3.0]))  # 2/3
    assert metric.correct.item() == 4
    assert metric.total.item() == 6
    assert metric.compute().item() == pytest.approx(4 / 6)
    assert metric.compute().dtype == torch.float64

    metric.reset()
    assert metric.correct.item() == 0
    assert metric.total.item() == 0
    assert metric.compute().item() == 0.0
    metric.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert metric.compute().item() == 0.0
    metric.update(torch.tensor([2.0]), torch.tensor([2.0]))
    assert metric.compute().item() == 0.5


def test_accuracy_is_not_a_mean_of_batch_means() -> None:
    metric = AnswerAccuracy()
    metric.update(torch.tensor([1.0]), torch.tensor([1.0]))  # batch acc 1.0, 1 item
    metric.update(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))  # batch acc 0.0, 3 items
    assert metric.compute().item() == 0.25  # not 0.5


def test_accuracy_accepts_lists_and_any_shape() -> None:
    metric = AnswerAccuracy()
    metric.update([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0, 3.0, 5.0])
    assert metric.total.item() == 4
    assert metric.compute().item() == 0.75


def test_accuracy_compares_in_float64() -> None:
    # 16777217 and 16777216 are the same number in float32; in float64 they differ by one.
    metric = AnswerAccuracy(relative_tolerance=0.0)
    preds = torch.tensor([16777217.0, 16777216.0], dtype=torch.float64)
    target = torch.tensor([16777216.0, 16777216.0], dtype=torch.float64)
    metric.update(preds, target)
    assert metric.compute().item() == 0.5


def test_accuracy_shape_mismatch_raises() -> None:
    metric = AnswerAccuracy()
    with pytest.raises(ValueError, match=r"same number of elements, got 3 and 2"):
        metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("tol", [-0.01, NAN, INF, -INF])
def test_accuracy_invalid_tolerance_raises(tol: float) -> None:
    with pytest.raises(ValueError, match="relative_tolerance must be a finite number >= 0"):
        AnswerAccuracy(relative_tolerance=tol)


def test_accuracy_zero_tolerance_is_allowed() -> None:
    assert AnswerAccuracy(relative_tolerance=0.0).relative_tolerance == 0.0


def test_accuracy_empty_compute_is_zero_not_nan() -> None:
    value = AnswerAccuracy().compute()
    assert value.item() == 0.0
    assert not torch.isnan(value)


def test_accuracy_empty_update_keeps_zero() -> None:
    metric = AnswerAccuracy()
    metric.update(torch.tensor([], dtype=torch.float64), torch.tensor([], dtype=torch.float64))
    assert metric.total.item() == 0
    assert metric.compute().item() == 0.0


# --------------------------------------------------------------------------------------------
# AnswerRate
# --------------------------------------------------------------------------------------------


def test_answer_rate_counts_finite_predictions() -> None:
    metric = AnswerRate()
    metric.update(torch.tensor([1.0, NAN, 0.0, -3.0]))
    assert metric.answered.item() == 3
    assert metric.total.item() == 4
    assert metric.compute().item() == 0.75
    metric.update(parse_answers(["no answer", "<answer>oops</answer>", "<answer>1</answer>", "x"]))
    assert metric.answered.item() == 4
    assert metric.total.item() == 8
    assert metric.compute().item() == 0.5
    assert metric.compute().dtype == torch.float64


def test_answer_rate_all_nan_and_reset() -> None:
    metric = AnswerRate()
    metric.update(torch.tensor([NAN, NAN]))
    assert metric.compute().item() == 0.0
    metric.update(torch.tensor([5.0, 6.0]))
    assert metric.compute().item() == 0.5
    metric.reset()
    assert metric.total.item() == 0
    assert metric.compute().item() == 0.0


def test_answer_rate_empty_compute_is_zero() -> None:
    value = AnswerRate().compute()
    assert value.item() == 0.0
    assert not torch.isnan(value)


# --------------------------------------------------------------------------------------------
# Distributed reduction: sum of counts, so the result is exact across ranks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "names"), [(AnswerAccuracy, ("correct", "total")), (AnswerRate, ("answered", "total"))])
def test_states_are_sum_reduced(cls, names) -> None:
    metric = cls()
    assert set(metric._reductions) == set(names)
    for name in names:
        assert metric._reductions[name] is dim_zero_sum
        assert getattr(metric, name).dtype == torch.long


def _rank_data():
    # "Rank 0" sees 1 item (correct), "rank 1" sees 3 items (1 correct, 1 unparsed).
    rank0 = (torch.tensor([10.0]), torch.tensor([10.0]))
    rank1 = (torch.tensor([NAN, 2.0, 100.0]), torch.tensor([1.0, 2.0, 50.0]))
    return rank0, rank1


def test_accuracy_merge_state_equals_single_metric_on_all_data() -> None:
    (p0, t0), (p1, t1) = _rank_data()
    rank0, rank1 = AnswerAccuracy(), AnswerAccuracy()
    rank0.update(p0, t0)
    rank1.update(p1, t1)
    reference = AnswerAccuracy()
    reference.update(torch.cat([p0, p1]), torch.cat([t0, t1]))

    rank0.merge_state(rank1)
    assert rank0.correct.item() == reference.correct.item() == 2
    assert rank0.total.item() == reference.total.item() == 4
    assert rank0.compute().item() == reference.compute().item() == 0.5
    # A mean of per-rank accuracies would give (1.0 + 1/3) / 2 = 0.667.
    assert rank0.compute().item() != pytest.approx((1.0 + 1 / 3) / 2)


def test_accuracy_reduction_fx_applied_to_stacked_rank_states() -> None:
    # What sync() does after all_gather: stack the per-rank states and apply the reduction.
    (p0, t0), (p1, t1) = _rank_data()
    ranks = [AnswerAccuracy(), AnswerAccuracy()]
    ranks[0].update(p0, t0)
    ranks[1].update(p1, t1)
    merged = AnswerAccuracy()
    for name in ("correct", "total"):
        stacked = torch.stack([getattr(r, name) for r in ranks])
        setattr(merged, name, merged._reductions[name](stacked))
    assert merged.correct.item() == 2
    assert merged.total.item() == 4
    assert merged.compute().item() == 0.5


def test_answer_rate_merge_state_equals_single_metric_on_all_data() -> None:
    a, b, reference = AnswerRate(), AnswerRate(), AnswerRate()
    pa = torch.tensor([1.0])
    pb = torch.tensor([NAN, NAN, 3.0, NAN])
    a.update(pa)
    b.update(pb)
    reference.update(torch.cat([pa, pb]))
    a.merge_state(b)
    assert a.answered.item() == reference.answered.item() == 2
    assert a.total.item() == reference.total.item() == 5
    assert a.compute().item() == reference.compute().item() == 0.4
