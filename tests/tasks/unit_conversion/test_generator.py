"""Tests for the unit table (sft_lightning.tasks.unit_conversion.units) and the generator (...generator):
hand-checked factors, pint traps, conventions, generator properties, held-out phrasings."""

from __future__ import annotations

import math
import re

import pytest

from sft_lightning.tasks.unit_conversion import calculator, units
from sft_lightning.tasks.unit_conversion import generator as unitconv
from sft_lightning.tasks.unit_conversion.generator import (
    FAMILIES,
    TEMPLATES,
    ConversionQuestion,
    UnknownFamilyError,
    UnknownUnitError,
    convert,
    generate_questions,
    generate_splits,
    normalize_question,
    resolve_unit,
)
from sft_lightning.tasks.unit_conversion.phrasings import HELDOUT
from tests.tasks.unit_conversion._templates import template_regex

# (value, source, target, expected, rel_tol). Expected values are literal numbers
# from the legal definitions (1 in = 2.54 cm, 1 lb = 0.45359237 kg, 1 gal = 231 in^3,
# g0 = 9.80665 m/s^2, 1 atm = 101325 Pa, ...), worked out by hand.
EXACT = 1e-12
HAND_CHECKED: list[tuple[float, str, str, float, float]] = [
    # length
    (1, "mile", "m", 1609.344, EXACT),
    (1, "in", "cm", 2.54, EXACT),
    (1, "ft", "m", 0.3048, EXACT),
    (1, "yd", "meters", 0.9144, EXACT),
    (1, "mi", "feet", 5280, EXACT),
    (6, "km", "meters", 6000, EXACT),
    (5, "km", "miles", 3.1068559611866697, 1e-12),  # 5 / 1.609344
    (12, "inches", "foot", 1, EXACT),
    (250, "mm", "cm", 25, EXACT),
    # mass
    (1, "lb", "kg", 0.45359237, EXACT),
    (1, "oz", "g", 28.349523125, EXACT),  # 0.45359237 kg / 16
    (1, "stone", "kg", 6.35029318, EXACT),  # 14 lb
    (1, "t", "kg", 1000, EXACT),
    (16, "ounces", "pounds", 1, EXACT),
    (5, "kg", "pounds", 11.023113109243878, 1e-12),  # 5 / 0.45359237
    (2500, "mg", "g", 2.5, EXACT),
    (1, "short ton", "lb", 2000, EXACT),  # US short ton
    (1, "ton", "kg", 1000, EXACT),  # a bare ton is the metric tonne (conventions.py)
    (1, "tonne", "lb", 2204.6226218487757, 1e-12),  # 1000 / 0.45359237
    (1, "long ton", "lb", 2240, EXACT),
    (1, "mcg", "mg", 0.001, EXACT),
    # time
    (1, "h", "s", 3600, EXACT),
    (1, "day", "min", 1440, EXACT),
    (1, "week", "hours", 168, EXACT),
    (1, "year", "days", 365.25, EXACT),  # Julian year, pint's definition
    (1, "decade", "years", 10, EXACT),
    (1, "century", "decades", 10, EXACT),
    (2, "hours", "minutes", 120, EXACT),
    (1500, "ms", "s", 1.5, EXACT),
    (1, "month", "days", 30.4375, EXACT),  # a twelfth of the Julian year, pint's `month`
    (12, "months", "years", 1, EXACT),
    # volume
    (1, "gal", "L", 3.785411784, EXACT),  # 231 in^3
    (1, "imperial gallon", "L", 4.54609, EXACT),
    (1, "qt", "L", 0.946352946, EXACT),
    (1, "pint", "mL", 473.176473, EXACT),
    (1, "cup", "ml", 236.5882365, EXACT),
    (1, "fl oz", "mL", 29.5735295625, EXACT),
    (1, "cc", "mL", 1, EXACT),
    (1, "m³", "liters", 1000, EXACT),
    (1000, "mm**3", "cm**3", 1, EXACT),
    (3.5, "liters", "milliliters", 3500, EXACT),
    (4, "gallons", "liters", 15.141647136, EXACT),
    (1, "tbsp", "tsp", 3, EXACT),
    (1, "cup", "tbsp", 16, EXACT),
    (1, "cu ft", "L", 28.316846592, EXACT),
    # speed
    (1, "mph", "km/h", 1.609344, EXACT),
    (1, "mi/h", "kmh", 1.609344, EXACT),
    (1, "m/s", "km/h", 3.6, EXACT),
    (1, "knot", "km/h", 1.852, EXACT),
    (1, "ft/s", "m/s", 0.3048, EXACT),
    (100, "kph", "mph", 62.13711922373339, 1e-12),  # 100 / 1.609344
    # data
    (1, "GB", "B", 1e9, EXACT),
    (1, "KB", "B", 1000, EXACT),
    (1, "kB", "bytes", 1000, EXACT),
    (1, "KiB", "B", 1024, EXACT),
    (1, "MiB", "B", 1048576, EXACT),
    (1, "GiB", "B", 1073741824, EXACT),
    (1, "B", "bits", 8, EXACT),
    (1, "Mb", "B", 125000, EXACT),
    (1, "TB", "GB", 1000, EXACT),
    (1, "GB", "Mb", 8000, EXACT),
    (1, "byte", "bit", 8, EXACT),
    (1, "kbit", "B", 125, EXACT),
    # area
    (1, "acre", "m²", 4046.8564224, EXACT),  # international acre = 43560 ft^2
    (1, "ha", "m^2", 10000, EXACT),
    (1, "km²", "hectares", 100, EXACT),
    (1, "sq ft", "m²", 0.09290304, EXACT),
    (1, "sq in", "cm²", 6.4516, EXACT),
    (1, "sq mi", "km²", 2.589988110336, EXACT),
    (1, "sq yd", "m²", 0.83612736, EXACT),
    (640, "acres", "square miles", 1, EXACT),
    # temperature (absolute temperatures, offset units)
    (100, "°C", "°F", 212, EXACT),
    (0, "°C", "°F", 32, EXACT),
    (20, "degC", "degF", 68, EXACT),
    (10, "Celsius", "Fahrenheit", 50, EXACT),
    (-40, "°C", "°F", -40, EXACT),
    (0, "°C", "K", 273.15, EXACT),
    (98.6, "°F", "°C", 37, EXACT),
    (300, "K", "°C", 26.85, EXACT),
    (0, "kelvin", "°F", -459.67, EXACT),
    # energy
    (1, "kWh", "J", 3.6e6, EXACT),
    (1, "cal", "J", 4.184, EXACT),  # thermochemical calorie
    (1, "kcal", "J", 4184, EXACT),
    (1, "Wh", "J", 3600, EXACT),
    (1, "BTU", "J", 1055.05585262, 1e-6),  # IT Btu; pint uses the rounded 1055.056
    (1, "MJ", "kJ", 1000, EXACT),
    (1, "kWh", "kJ", 3600, EXACT),
    # pressure
    (1, "atm", "Pa", 101325, EXACT),
    (1, "psi", "Pa", 6894.757, 1e-6),  # 0.45359237 * 9.80665 / 0.0254**2 = 6894.7572931...
    (1, "bar", "Pa", 100000, EXACT),
    (1, "mbar", "hPa", 1, EXACT),
    (1, "hPa", "Pa", 100, EXACT),
    (1, "torr", "Pa", 133.32236842105263, 1e-12),  # 101325 / 760
    (1, "mmHg", "Pa", 133.322387415, EXACT),
    (1, "atm", "psi", 14.695948775513449, 1e-9),
    (1, "kPa", "Pa", 1000, EXACT),
    (1, "bar", "psi", 14.503773773022, 1e-9),
]


def test_hand_checked_table_is_large_enough() -> None:
    assert len(HAND_CHECKED) >= 40
    assert {unitconv.family_of(src) for _, src, _, _, _ in HAND_CHECKED} == set(FAMILIES)


@pytest.mark.parametrize(("value", "source", "target", "expected", "rel"), HAND_CHECKED)
def test_hand_checked_conversion(value: float, source: str, target: str, expected: float, rel: float) -> None:
    got = convert(value, source, target)
    assert got == pytest.approx(expected, rel=rel, abs=1e-12)


# ------------------------------------------------------------------ pint traps


def test_decade_is_ten_years_not_pints_logarithmic_unit() -> None:
    ureg = units.registry()
    assert not ureg.get_dimensionality("decade")  # the trap: pint's decade is logarithmic, dimensionless
    assert resolve_unit("decade") == "decade"
    assert resolve_unit("decades") == "decade"
    assert convert(2, "decades", "years") == 20


def test_acre_is_international_not_pints_survey_acre() -> None:
    ureg = units.registry()
    pint_acre = float(ureg.parse_expression("acre").to("meter ** 2").magnitude)
    assert pint_acre == pytest.approx(4046.8726, rel=1e-7)  # the trap: US survey acre
    assert convert(1, "acre", "m²") == pytest.approx(4046.8564224, rel=1e-12)


@pytest.mark.parametrize("name", ["G", "M"])
def test_single_letter_prefix_symbols_are_rejected(name: str) -> None:
    with pytest.raises(UnknownUnitError, match="pint"):
        resolve_unit(name)


def test_b_is_byte_and_case_matters_for_bits() -> None:
    assert resolve_unit("B") == "byte"
    assert resolve_unit("MB") == "megabyte"
    assert resolve_unit("Mb") == "megabit"  # pint would read Mb as megabarn
    assert convert(1, "MB", "Mb") == 8
    for ambiguous in ("b", "kb", "mb"):
        with pytest.raises(UnknownUnitError, match="ambiguous"):
            resolve_unit(ambiguous)


def test_kb_means_1000_bytes_and_binary_needs_kib() -> None:
    assert resolve_unit("KB") == resolve_unit("kB") == "kilobyte"
    assert convert(1, "KB", "B") == 1000
    assert convert(1, "KiB", "B") == 1024
    assert convert(1, "MB", "KB") == 1000
    assert convert(1, "MiB", "KiB") == 1024


@pytest.mark.parametrize(
    ("quantity", "source", "target", "expected"),
    [(3, "um", "nanometers", 3000), (2, "MPa", "psi", 290.0754), (1, "UK pint", "ml", 568.26125), (2, "imperial pints", "pints", 2.4019)],
)
def test_units_people_ask_beyond_the_everyday(quantity: float, source: str, target: str, expected: float) -> None:
    assert convert(quantity, source, target) == pytest.approx(expected, rel=1e-5)


def test_pint_undefined_spellings_work_through_alias_table() -> None:
    assert resolve_unit("kmh") == "kilometer_per_hour"
    assert resolve_unit("km/h") == "kilometer_per_hour"
    assert resolve_unit("mph") == "mile_per_hour"
    assert resolve_unit("cc") == "cubic_centimeter"
    assert resolve_unit("mm**3") == "cubic_millimeter"


def test_temperature_letters_are_not_coulomb_or_farad() -> None:
    assert resolve_unit("K") == "kelvin"
    for name in ("C", "F"):
        with pytest.raises(UnknownUnitError, match="°"):
            resolve_unit(name)


def test_surface_forms_resolve_to_same_key() -> None:
    for form in ("km", "kilometer", "kilometers", "Kilometres", "  kilometre "):
        assert resolve_unit(form) == "kilometer"
    for form in ("lb", "lbs", "pound", "POUNDS"):
        assert resolve_unit(form) == "pound"
    assert resolve_unit("sq  ft") == "square_foot"


def test_every_canonical_key_resolves_to_itself() -> None:
    for family in FAMILIES:
        for key in unitconv.units_of(family):
            assert resolve_unit(key) == key


# ------------------------------------------------------------------ errors


def test_unknown_unit_message_names_unit_and_suggests() -> None:
    with pytest.raises(UnknownUnitError, match=r"unknown unit 'kilometr'.*did you mean: .*kilometer"):
        resolve_unit("kilometr")
    with pytest.raises(UnknownUnitError, match="accepted unit keys"):
        convert(1, "xyzzy", "m")


def test_unknown_unit_in_units_restriction_names_family() -> None:
    with pytest.raises(UnknownUnitError, match=r"unknown mass unit 'kilogrm'; accepted mass spellings: .*kg"):
        generate_questions(5, seed=0, units={"mass": ["kg", "kilogrm"]})
    with pytest.raises(UnknownUnitError, match="is length .*not a mass unit"):
        generate_questions(5, seed=0, units={"mass": ["kg", "km"]})


def test_unknown_family_lists_families() -> None:
    with pytest.raises(UnknownFamilyError, match="unknown unit family 'lenght'.*length, mass, time"):
        generate_questions(5, seed=0, families=["lenght"])
    with pytest.raises(UnknownFamilyError, match="expected one of"):
        generate_splits(5, 5, seed=0, units={"volumes": ["L"]})


def test_incompatible_dimensions() -> None:
    with pytest.raises(ValueError, match="incompatible dimensions"):
        convert(1, "kg", "m")
    with pytest.raises(ValueError, match="incompatible dimensions"):
        convert(1, "MB", "m")  # pint treats bytes as dimensionless; we must not


def test_impossible_sizes_raise_clear_error() -> None:
    with pytest.raises(ValueError, match="no usable unit pair"):
        generate_questions(5, seed=0, families=["length"], units={"length": ["m"]})
    with pytest.raises(ValueError, match="cannot generate"):
        generate_questions(10**7, seed=0, families=["temperature"])
    with pytest.raises(ValueError, match="cannot generate"):
        generate_splits(10**7, 10, seed=0, families=["temperature"])


# ------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def big_set() -> list[ConversionQuestion]:
    return generate_questions(4000, seed=123)


def test_enough_templates_and_all_used(big_set: list[ConversionQuestion]) -> None:
    assert len(TEMPLATES) >= 40 and len(HELDOUT) >= 8
    for template in TEMPLATES:
        regex = template_regex(template.text)
        assert any(regex.match(q.question) for q in big_set), template.text


def test_every_family_and_both_quantity_kinds_present(big_set: list[ConversionQuestion]) -> None:
    assert {q.family for q in big_set} == set(FAMILIES)
    integers = [q for q in big_set if float(q.quantity).is_integer()]
    decimals = [q for q in big_set if not float(q.quantity).is_integer()]
    assert len(integers) > len(big_set) / 2  # mostly integers
    assert len(decimals) > len(big_set) / 10
    assert all(round(q.quantity, 2) == q.quantity for q in big_set)  # at most two decimals


def test_answers_finite_and_in_range(big_set: list[ConversionQuestion]) -> None:
    for q in big_set:
        assert math.isfinite(q.answer)
        if q.family != "temperature":
            assert unitconv.MIN_ABS_ANSWER <= abs(q.answer) <= unitconv.MAX_ABS_ANSWER, q
            assert q.quantity > 0


def test_answers_match_convert_and_question_mentions_quantity(big_set: list[ConversionQuestion]) -> None:
    for q in big_set[:500]:
        assert q.answer == convert(q.quantity, q.source_unit, q.target_unit)
        said = {unitconv.format_quantity(q.quantity)} | set(_WORDS.get(q.quantity, ()))
        said |= {f"{q.quantity / 1e6:g} million"} if q.quantity >= 1e6 else set()
        found = any(re.search(rf"(?<![\w.]){re.escape(s)}\b", q.question.replace(",", "")) for s in said)
        if q.quantity == 1 and not found:  # "pint in ml": 1 left unsaid, and then no number at all
            found = re.search(r"(?<![\w^.])\d", q.question) is None
        assert found, q.question
        assert unitconv.family_of(q.source_unit) == unitconv.family_of(q.target_unit) == q.family
        assert q.source_unit != q.target_unit


_WORDS = {1: ("a", "an", "one"), 0.5: ("half a", "half an"), 2: ("two",), 3: ("three",), 4: ("four",), 5: ("five",), 6: ("six",), 7: ("seven",), 8: ("eight",), 9: ("nine",), 10: ("ten",)}


def test_quantities_are_said_as_people_say_them() -> None:
    """"half a cup", "pint in ml" for one pint, and "60,000 BTU" or "2 million" copied into the set-up as written."""
    questions = generate_questions(8000, seed=5)
    halves = [q for q in questions if re.search(r"\bhalf an? ", q.question)]
    assert len(halves) >= 10 and all(q.quantity == 0.5 and ": 0.5" in q.working for q in halves)
    for pattern in (r"\b\d+(\.\d+)? million\b", r"(?<![\d.,])\d{1,3}(,\d{3})+(?![\d,])"):
        said = [(q, re.search(pattern, q.question)[0]) for q in questions if re.search(pattern, q.question)]
        assert len(said) >= 10, pattern
        for q, text in said:
            assert q.family == "temperature" or q.working.split(": ")[1].startswith(text + "×"), (q.question, q.working)
            assert calculator.evaluate(text) == q.quantity
    unsaid = [q for q in questions if q.quantity == 1 and re.search(r"(?<![\w^.])\d", q.question) is None
              and not re.search(r"\b(a|an|one)\b", q.question, re.I)]
    assert unsaid and all(q.working.split(": ")[1].startswith("1×") or q.family == "temperature" for q in unsaid)


def test_singular_unit_when_quantity_is_one(big_set: list[ConversionQuestion]) -> None:
    ones = [q for q in big_set if abs(q.quantity) == 1]
    assert ones
    plurals = {plural for u in units.UNITS for singular, plural in u.names if plural != singular}
    for q in ones:
        if unitconv.format_quantity(q.quantity) + " " not in q.question:
            continue  # the quantity ends the question ("km to m: 1")
        after = q.question.split(unitconv.format_quantity(q.quantity) + " ", 1)[1].lower()
        assert not any(after.startswith(p.lower() + " ") or after.startswith(p.lower() + ",") for p in plurals), q.question


def test_surface_forms_vary(big_set: list[ConversionQuestion]) -> None:
    texts = " ".join(q.question for q in big_set)
    for form in (" km ", "kilometers", " kg ", "pounds", "°F", "mph", " GB", "liters"):
        assert form in texts, form


def test_questions_unique(big_set: list[ConversionQuestion]) -> None:
    assert len({normalize_question(q.question) for q in big_set}) == len(big_set)
    assert len({(q.quantity, q.source_unit, q.target_unit) for q in big_set}) == len(big_set)


def test_deterministic_and_seed_sensitive() -> None:
    a = generate_questions(300, seed=7)
    assert a == generate_questions(300, seed=7)
    assert a != generate_questions(300, seed=8)
    assert generate_splits(200, 50, seed=7, n_unseen=20) == generate_splits(200, 50, seed=7, n_unseen=20)


def test_family_and_unit_restriction() -> None:
    qs = generate_questions(200, seed=1, families=["speed", "temperature"], units={"speed": ["kmh", "mph"]})
    assert {q.family for q in qs} == {"speed", "temperature"}
    assert {q.source_unit for q in qs if q.family == "speed"} == {"kilometer_per_hour", "mile_per_hour"}
    assert len(generate_questions(0, seed=1)) == 0


def test_splits_disjoint_and_sized() -> None:
    train, val, unseen = generate_splits(2000, 400, seed=3, n_unseen=200)
    assert (len(train), len(val), len(unseen)) == (2000, 400, 200)
    texts = [{normalize_question(q.question) for q in part} for part in (train, val, unseen)]
    triples = [{(q.quantity, q.source_unit, q.target_unit) for q in part} for part in (train, val, unseen)]
    # every question is a distinct text; validation questions are distinct conversions too
    assert [len(t) for t in texts] == [2000, 400, 200] and [len(t) for t in triples[1:]] == [400, 200]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not texts[a] & texts[b] and not triples[a] & triples[b]
    assert {q.family for q in val} == {q.family for q in unseen} == set(FAMILIES)
    # Partition is by stable hash, so a validation set never meets another seed's training set.
    other_train = generate_splits(2000, 0, seed=99).train
    assert not {(q.quantity, q.source_unit, q.target_unit) for q in other_train} & (triples[1] | triples[2])


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, sft_lightning.tasks.unit_conversion.generator; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        convert(bad, "m", "km")
