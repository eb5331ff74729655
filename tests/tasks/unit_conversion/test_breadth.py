"""The default training data: every unit and spelling, held-out phrasings kept out of training,
worked answers that compute what they claim."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from sft_lightning.data.prompt import format_answer
from sft_lightning.evaluation.metrics import parse_answer
from sft_lightning.tasks.unit_conversion import rates
from sft_lightning.tasks.unit_conversion.generator import ConversionQuestion, Splits, generate_splits, normalize_question
from sft_lightning.tasks.unit_conversion.phrasings import HELDOUT, TRAIN, pick_spelling
from sft_lightning.tasks.unit_conversion.units import UNITS, convert
from sft_lightning.tasks.unit_conversion.worked import working
from tests.tasks.unit_conversion._templates import template_regex


@pytest.fixture(scope="module")
def splits() -> Splits:
    return generate_splits(12000, 300, seed=5, n_unseen=300)


def _mentions(text: str, spelling: str, exact_case: bool = False) -> bool:
    """``spelling`` appears in ``text`` as a whole unit name (case-insensitive for words, unless ``exact_case``)."""
    word = spelling.replace(" ", "").isalpha() and not spelling.isupper()
    flags = re.IGNORECASE if word and not exact_case else 0
    return re.search(rf"(?<![\w°]){re.escape(spelling)}(?![\w²³])", text, flags) is not None


def test_every_unit_of_the_table_is_trained_on(splits: Splits) -> None:
    used = Counter(k for q in splits.train for k in (q.source_unit, q.target_unit))
    assert set(used) == {u.key for u in UNITS} | {u.key for u in rates.generated()}
    for key in ("month", "short_ton", "tonne", "bit", "byte", "quart", "pint", "yard", "century", "tablespoon"):
        assert used[key] >= 20, key


def test_every_trained_spelling_appears_and_no_held_out_one(splits: Splits) -> None:
    texts = [q.question for q in splits.train]
    for unit in UNITS:
        singulars = {singular for singular, plural in unit.names if singular != plural}
        for spelling in unit.spellings():
            # a singular is written only for a quantity of exactly 1 (test_unitconv checks agreement)
            if spelling in unit.heldout or spelling in singulars:
                continue
            mine = [q.question for q in splits.train if unit.key in (q.source_unit, q.target_unit)]
            assert any(_mentions(t, spelling) for t in mine), (unit.key, spelling)
    for unit in UNITS:
        for spelling in unit.heldout:
            mine = [q.question for q in splits.train if unit.key in (q.source_unit, q.target_unit)]
            assert not any(_mentions(t, spelling, exact_case=True) for t in mine), (unit.key, spelling)
    assert len(texts) == 12000


def test_held_out_templates_appear_only_in_val_unseen(splits: Splits) -> None:
    def template_of(question: str, templates: tuple) -> bool:
        return any(template_regex(t.text).match(question) for t in templates)

    assert not any(template_of(q.question, HELDOUT) for q in splits.train)
    assert not any(template_of(q.question, HELDOUT) for q in splits.val)
    assert all(template_of(q.question, HELDOUT) for q in splits.val_unseen)


def test_val_unseen_uses_held_out_spellings(splits: Splits) -> None:
    held = {u.key: u.heldout for u in UNITS if u.heldout}
    with_held = [q for q in splits.val_unseen if q.source_unit in held or q.target_unit in held]
    assert with_held
    for q in with_held:
        assert any(s in q.question for key in (q.source_unit, q.target_unit) for s in held.get(key, ())), q.question


def test_quantity_last_and_scene_phrasings_are_trained(splits: Splits) -> None:
    texts = [q.question for q in splits.train]
    assert any(re.search(r"for [\d.,]+ units\??$", t) for t in texts)
    assert any(t.lower().startswith("my suitcase weighs") for t in texts)
    assert sum(t[0].islower() for t in texts) > len(texts) / 5  # people do not always capitalise
    assert any(re.search(r"\d,\d{3}", t) for t in texts)  # thousands separators


def test_pick_spelling_never_returns_a_held_out_form_for_training() -> None:
    import random

    rng = random.Random(0)
    kilometer = next(u for u in UNITS if u.key == "kilometer")
    seen = {pick_spelling(rng, kilometer, singular=False, heldout=False) for _ in range(400)}
    assert "kilometres" not in seen and {"km", "kilometers"} <= {s.lower() for s in seen} | seen
    assert {pick_spelling(rng, kilometer, singular=False, heldout=True) for _ in range(50)} == {"kilometres"}


@pytest.mark.parametrize(
    ("quantity", "source", "target", "text", "value"),
    [
        (6, "foot", "meter", "ft to m: 6×0.305=", 1.83),
        (5, "quart", "pint", "qt to pt: 5×2=", 10),
        (3, "month", "day", "mo to d: 3×30.4=", 91.2),
        (2, "short_ton", "kilogram", "short ton to kg: 2×907=", 1814),
        (2, "tonne", "pound", "t to lb: 2×2200=", 4400),
        (4, "meter_per_second", "inch_per_second", "m/s to in/s: 4×39.4=", 157.6),
        (100, "fahrenheit", "celsius", "°F to °C: (100-32)/1.8=68/1.8=", 100 / 1.8 - 32 / 1.8),
        (37, "celsius", "fahrenheit", "°C to °F: 37×1.8+32=66.6+32=", 98.6),
        (-15, "celsius", "fahrenheit", "°C to °F: -15×1.8+32=-27+32=", 5),
        (20, "celsius", "kelvin", "°C to K: 20+273.15=", 293.15),
        (300, "kelvin", "fahrenheit", "K to °F: (300-273.15)×1.8+32=26.85×1.8+32=", 80.33),
    ],
)
def test_worked_answer_states_the_factor_and_computes_it(quantity: float, source: str, target: str, text: str, value: float) -> None:
    got_text, got_value = working(quantity, source, target)
    assert got_text == text
    assert got_value == pytest.approx(value, rel=1e-9)
    # within 0.5% of pint (the factor has 3 significant digits), so well inside the 5% tolerance
    assert got_value == pytest.approx(convert(quantity, source, target), rel=5e-3)


def test_worked_targets_parse_to_within_tolerance_of_the_truth(splits: Splits) -> None:
    for q in splits.train[:3000]:
        target = format_answer(q.worked_value, 3, q.working)
        assert parse_answer(target) == pytest.approx(q.answer, rel=0.01, abs=0.006), (q.question, target)


def test_questions_of_one_are_singular_and_units_agree(splits: Splits) -> None:
    ones = [q for q in splits.train if q.quantity == 1]
    assert ones
    assert not any(re.search(r"\b1 units\b", q.question) for q in ones)


def test_templates_are_distinct_across_sets() -> None:
    assert not {normalize_question(t.text) for t in TRAIN} & {normalize_question(t.text) for t in HELDOUT}


def test_conversion_question_carries_its_working() -> None:
    q = generate_splits(5, 1, seed=0).train[0]
    assert isinstance(q, ConversionQuestion) and q.working.endswith("=")
