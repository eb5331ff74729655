"""Rates composed, not listed: any length of the table over any time of the table (issue 30, item 2)."""

from __future__ import annotations

import pytest

from sft_lightning.tasks.unit_conversion import rates
from sft_lightning.tasks.unit_conversion.factor_lookup import completion
from sft_lightning.tasks.unit_conversion.generator import generate_questions, select_units
from sft_lightning.tasks.unit_conversion.units import UNITS, UnknownUnitError, convert, resolve_unit, unit

INCH, FOOT, MILE = 0.0254, 0.3048, 1609.344


@pytest.mark.parametrize(
    ("quantity", "source", "target", "expected"),
    [
        (4, "m/s", "in/s", 4 / INCH),  # "4 m/s into in/s"
        (1, "inches per second", "cm/min", 2.54 * 60),
        (1, "ft/h", "m/s", FOOT / 3600),
        (1, "km/s", "km/h", 3600),
        (1, "mi/min", "mph", 60),
        (3, "yards per hour", "ft/hr", 9),
        (1, "mm/s", "m/day", 86.4),
    ],
)
def test_any_length_over_any_time_is_a_speed_with_pints_factor(quantity: float, source: str, target: str, expected: float) -> None:
    assert convert(quantity, source, target) == pytest.approx(expected, rel=1e-12)


def test_a_composed_rate_the_table_lists_is_the_tables_unit() -> None:
    assert resolve_unit("kilometres/hour") == resolve_unit("km per h") == "kilometer_per_hour"
    assert resolve_unit("miles per hour") == "mile_per_hour"
    assert resolve_unit("nmi/h") == "knot"
    assert resolve_unit("in/s") == "inch_per_second" == unit("inch_per_second").key


@pytest.mark.parametrize("name", ["miles per gallon", "kg/s", "s/m", "m/", "/s", "in/G"])
def test_only_a_length_over_a_time_composes(name: str) -> None:
    with pytest.raises(UnknownUnitError):
        resolve_unit(name)


def test_the_lookup_completes_a_composed_set_up() -> None:
    assert completion("m/s to in/s: 4×") == "39.4=<answer>157.6</answer>"
    assert completion("ft/d to m/yr: 2×") == "111=<answer>222</answer>"  # 2 ft a day is 222.7 m a year


def test_the_generator_asks_composed_rates_in_most_speed_questions() -> None:
    speed = [q for q in generate_questions(600, seed=4, families=["speed"])]
    table = {u.key for u in UNITS}
    composed = [q for q in speed if not {q.source_unit, q.target_unit} <= table]
    assert 0.5 * len(speed) < len(composed) < 0.8 * len(speed)  # the table's own speeds keep the rest
    assert {q.working.split(" to ")[0] for q in composed} & {"in/s", "cm/min", "ft/h", "km/s", "mi/min", "m/s"}
    over_days_or_longer = {u.key.rpartition("_per_")[2] for u in rates.generated()}
    assert {"day", "week", "month", "year"} <= over_days_or_longer  # "2 ft per day in m per year"
    assert all(u.key not in table and u.family == "speed" for u in rates.generated())


def test_a_composed_rate_can_be_asked_for_by_name() -> None:
    chosen = select_units(["speed"], {"speed": ["in/s", "m/s"]})
    assert [u.key for u in chosen["speed"]] == ["meter_per_second", "inch_per_second"]
    questions = generate_questions(20, seed=0, families=["speed"], units={"speed": ["in/s", "m/s"]})
    assert {q.source_unit for q in questions} == {"meter_per_second", "inch_per_second"}


def test_every_spelling_of_a_generated_rate_round_trips() -> None:
    for rate in rates.generated():
        for spelling in rate.spellings():
            assert resolve_unit(spelling) == rate.key, spelling


def test_a_rate_named_with_a_held_out_length_spelling_is_held_out_of_training() -> None:
    assert unit("kilometer_per_minute").heldout == {"kilometre per minute", "kilometres per minute"}
    trained = " ".join(q.question.lower() for q in generate_questions(600, seed=4, families=["speed"]))
    assert "kilometres per minute" not in trained and "kilometers per minute" in trained
