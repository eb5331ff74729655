"""Tests for sft_lightning.data.prompt: the prompt/answer format and relative-precision numbers."""

from __future__ import annotations

import math
import random

import pytest

from sft_lightning.data.prompt import ANSWER_CLOSE, ANSWER_OPEN, format_answer, format_number, format_prompt
from sft_lightning.evaluation.metrics import parse_answer


def test_format_prompt_exact_structure() -> None:
    # the leading newline keeps the question's first token off position 0 (see format_prompt)
    assert format_prompt("How many metres in a mile?") == "\nHow many metres in a mile?\n"


def test_format_prompt_strips_question() -> None:
    prompt = format_prompt("  \n Convert 5 kg to lb \t\n")
    assert prompt == "\nConvert 5 kg to lb\n"
    assert prompt.endswith("\n")  # generation continues right here


def test_format_prompt_keeps_inner_text_verbatim() -> None:
    question = "Line one\n  line two: 3°C -> °F?"
    assert format_prompt(question) == f"\n{question}\n"


def test_format_answer_writes_the_working_before_the_tag() -> None:
    target = format_answer(1.83, 3, working="ft to m: 6×0.305=")
    assert target == "ft to m: 6×0.305=<answer>1.83</answer>"
    assert parse_answer(target) == 1.83  # the metric reads the tag, not the numbers before it


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.000123456, "0.0001235"),
        (1609344, "1609000"),
        (1609.344, "1609"),
        (68.0, "68"),
        (68, "68"),
        (2.54, "2.54"),
        (0.5, "0.5"),
        (1.0, "1"),
        (100.0, "100"),
        (123456.0, "123500"),
        (3.14159265, "3.142"),
        (-3.14159265, "-3.142"),
        (-0.000123456, "-0.0001235"),
        (-1609344, "-1609000"),
        (-68.0, "-68"),
        (0, "0"),
        (0.0, "0"),
        (-0.0, "0"),
        (1e-6, "0.000001"),
        (1.5e14, "150000000000000"),
        (1e-9, "1.000e-09"),
        (-1e-9, "-1.000e-09"),
        (1e20, "1.000e+20"),
        (6.02214076e23, "6.022e+23"),
        (1e15, "1.000e+15"),
        (9.9996e14, "1.000e+15"),  # rounding crosses the threshold: judged after rounding
    ],
)
def test_format_number_significant_digits(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_format_number_never_rounds_small_values_to_zero() -> None:
    for exponent in range(-6, 0):
        value = 1.234 * 10.0**exponent
        text = format_number(value)
        assert float(text) != 0
        assert math.isclose(float(text), value, rel_tol=1e-9)


def test_format_number_other_significant_digits() -> None:
    assert format_number(3.14159265, significant_digits=2) == "3.1"
    assert format_number(3.14159265, significant_digits=6) == "3.14159"
    assert format_number(1609344, significant_digits=1) == "2000000"
    assert format_number(1e-9, significant_digits=2) == "1.0e-09"
    assert format_number(1e20, significant_digits=1) == "1e+20"


@pytest.mark.parametrize("digits", [0, -1])
def test_format_number_invalid_significant_digits(digits: int) -> None:
    with pytest.raises(ValueError, match="significant_digits must be >= 1"):
        format_number(1.0, significant_digits=digits)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_format_number_and_answer_reject_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_number(value)
    with pytest.raises(ValueError, match="non-finite"):
        format_answer(value)


def test_format_answer_wraps_number_in_tags() -> None:
    assert ANSWER_OPEN == "<answer>"
    assert ANSWER_CLOSE == "</answer>"
    assert format_answer(1609.344) == "<answer>1609</answer>"
    assert format_answer(-0.000123456) == "<answer>-0.0001235</answer>"
    assert format_answer(1e20) == "<answer>1.000e+20</answer>"
    assert format_answer(3.14159265, significant_digits=6) == "<answer>3.14159</answer>"


def test_format_answer_has_no_eos_or_whitespace() -> None:
    text = format_answer(42.0)
    assert text == "<answer>42</answer>"
    assert "<|im_end|>" not in text


def test_round_trip_parse_of_format_answer_random_values() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        magnitude = 10 ** rng.uniform(-5, 9)  # 1e-5 .. 1e9, log-uniform
        value = magnitude if rng.random() < 0.7 else -magnitude
        parsed = parse_answer(format_answer(value))
        assert parsed is not None, (value, format_answer(value))
        # 4 significant digits: the rounding error is at most half a unit in the 4th digit.
        assert abs(parsed - value) <= 5e-4 * abs(value), (value, format_answer(value), parsed)


def test_round_trip_extreme_values() -> None:
    for value in (1e-300, 1e-9, 1e-7, 9.99949e-7, 1e15, 1e20, 1.7e308, -2.5e-12, 0.0):
        parsed = parse_answer(format_answer(value))
        assert parsed is not None, value
        assert abs(parsed - value) <= 5e-4 * abs(value), (value, format_answer(value), parsed)


def test_round_trip_within_metric_tolerance_for_integers() -> None:
    # Typical conversion answers: exact integers come back exact when they have <= 4 digits.
    for value in (1, 12, 123, 1234, -9999, 1000):
        assert parse_answer(format_answer(value)) == value
