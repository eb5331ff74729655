"""The factor lookup: once the model has named the units and the quantity, the unit table writes the factor."""

from __future__ import annotations

import re

import pytest

from sft_lightning.budget.validation_estimate import decoding_steps
from sft_lightning.data.prompt import format_answer
from sft_lightning.evaluation.generation import CompletionHook
from sft_lightning.evaluation.metrics import parse_answer
from sft_lightning.models.tiny import build_char_tokenizer
from sft_lightning.tasks.unit_conversion.factor_lookup import completion, units_of_set_up
from sft_lightning.tasks.unit_conversion.generator import generate_questions
from sft_lightning.tasks.unit_conversion.task import UnitConversion
from sft_lightning.tasks.unit_conversion.units import FAMILIES, UNITS, resolve_unit


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("ft to m: 6×", "0.305=<answer>1.83</answer>"),
        ("feet to metres: 6×", "0.305=<answer>1.83</answer>"),  # any spelling the table resolves
        ("fl oz to mL: 2.5×", "29.6=<answer>74</answer>"),  # a symbol with a space
        ("st to mg: 3×", "6350000=<answer>19050000</answer>"),  # the factors the model got wrong most
        ("s to h: 90×", "0.000278=<answer>0.02502</answer>"),
        ("ft to m: 1,500×", "0.305=<answer>457.5</answer>"),
        (" mi to km: 26.2×", "1.61=<answer>42.18</answer>"),
    ],
)
def test_a_set_up_gets_the_tables_factor_and_its_product(text: str, rest: str) -> None:
    assert completion(text) == rest
    assert UnitConversion().completion(text) == rest


@pytest.mark.parametrize(
    "text",
    [
        "K to °C: 0×",  # a temperature set up with another formula than its own
        "°F to °C: (-",  # no quantity yet
        "ft to kg: 6×",  # two families
        "furlongs to m: 3×",  # a unit the table lacks: the model writes its own factor
        "C to F: 37×",  # informal spellings do not resolve
        "ft to m: six×",  # no number
        "1 ft = 0.305 m; 6×",  # another format
        "ft to m: 6×0.3",  # the factor is written already
        "ft to m: 6",
        "I think ft to m: 6×",
        "",
    ],
)
def test_anything_else_is_left_to_the_model(text: str) -> None:
    assert completion(text) is None


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("°C to °F: -40×", "1.8+32=-72+32=<answer>-40</answer>"),
        ("°F to °C: (-10-", "32)/1.8=-42/1.8=<answer>-23.33</answer>"),
        ("°C to K: -21+", "273.15=<answer>252.1</answer>"),
        ("K to °C: 0-", "273.15=<answer>-273.1</answer>"),
    ],
)
def test_a_temperature_gets_its_formula_once_the_quantity_is_written(text: str, rest: str) -> None:
    assert completion(text) == rest
    assert UnitConversion().completion(text) == rest


def test_every_generated_temperature_is_completed_as_trained() -> None:
    for q in generate_questions(120, seed=3, families=["temperature"]):
        target = format_answer(q.worked_value, 4, q.working)
        cut = re.match(r".+?: \(?-?[\d.]+[×+-]", target)
        assert cut is not None, target
        rest = completion(cut[0])
        assert rest is not None and rest.split("<answer>")[0] == target[cut.end():].split("<answer>")[0], target
        assert parse_answer(cut[0] + rest) == pytest.approx(q.worked_value, rel=1e-3, abs=0.06)


def test_every_canonical_symbol_resolves_to_its_own_unit() -> None:
    """The model writes units as the worked answers do, by symbol: each must name exactly its unit."""
    assert all(resolve_unit(u.symbol) == u.key for u in UNITS)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "temperature"])
def test_generation_writes_what_training_teaches(family: str) -> None:
    """For every generated question the lookup completes the set-up with the training target's own factor,
    and the number it answers is the target's."""
    for q in generate_questions(150, seed=3, families=[family]):
        target = format_answer(q.worked_value, 4, q.working)
        set_up, factor_on = target.split("×", 1)
        assert units_of_set_up(set_up + "×") is not None, target
        rest = completion(set_up + "×")
        assert rest is not None and rest.split("<answer>")[0] == factor_on.split("<answer>")[0], target
        assert parse_answer(set_up + "×" + rest) == pytest.approx(q.worked_value, rel=1e-3)


def test_the_hook_fires_on_the_factors_place_and_decoding_stops_there() -> None:
    tok = build_char_tokenizer()
    task = UnitConversion()
    hook = CompletionHook(
        task.completion,
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        encode=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        eos_token_id=tok.eos_token_id,
        trigger=task.completion_trigger,
    )
    set_up = tok("ft to m: 6×", add_special_tokens=False)["input_ids"]
    forced = hook(set_up)
    assert forced is not None and forced[-1] == tok.eos_token_id
    assert tok.decode(forced[:-1]) == "0.305=<answer>1.83</answer>"
    assert hook(set_up[:-1]) is None
    answer = tok("ft to m: 6×0.305=<answer>1.83</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert decoding_steps([answer], hook) == [len(set_up)]  # a trained model's answer costs the set-up's steps
