"""Reading units as people write them: a unit's meaning from its neighbour, the conventions, and set-ups
that name the unit the question meant (issue 30, items 1, 3 and 4)."""

from __future__ import annotations

import itertools
import re

import pytest

from sft_lightning.data.records import DataError
from sft_lightning.tasks.unit_conversion.conventions import CHOICES, DEFAULT, Conventions, table_views
from sft_lightning.tasks.unit_conversion.factor_lookup import completion
from sft_lightning.tasks.unit_conversion.generator import generate_questions, generate_splits
from sft_lightning.tasks.unit_conversion.task import UnitConversion
from sft_lightning.tasks.unit_conversion.units import UnknownUnitError, convert, resolve_pair, resolve_unit
from sft_lightning.tasks.unit_conversion.worked import set_up_symbol

EVERY_CONVENTION = [Conventions(**dict(zip(CHOICES, combo))) for combo in itertools.product(*CHOICES.values())]

# ------------------------------------------------------------------ a unit's meaning from its neighbour


@pytest.mark.parametrize(
    ("quantity", "source", "target", "expected"),
    [
        (2, "G", "MB", 2000),  # "How many MB is 2 G?"
        (10, "M", "KB", 10000),  # "Convert 10 M to KB?"
        (1, "GB", "M", 1000),  # "What is 1 GB in M?"
        (1, "M", "KB", 1000),  # "How many KB make up 1 M?"
        (3, "KB", "B", 3000),  # "3 KB as B"
        (2, "T", "GB", 2000),
        (5, "k", "B", 5000),
        (1, "G", "Mb", 8000),  # a prefix alone is bytes, beside bits too
        (8, "G", "MiB", 8192),  # "8 G in MiB": beside a binary size, the binary size
        (4, "KiB", "G", 4 / 1024**2),
        (2, "gb", "MB", 2000),  # as people type them: kb, mb, gb, tb, gigs, megs
        (1500, "kb", "GB", 0.0015),
        (3, "tb", "GB", 3000),
        (2, "gigs", "megs", 2000),  # two spellings that each need a neighbour: read in the family they share
        (1, "gb", "mb", 1000),
    ],
)
def test_data_a_prefix_alone_beside_a_data_size_is_that_data_size(quantity: float, source: str, target: str, expected: float) -> None:
    assert convert(quantity, source, target) == pytest.approx(expected, rel=1e-12)


def test_data_a_prefix_alone_follows_the_kilobyte_convention() -> None:
    assert resolve_pair("G", "MB", Conventions(kilobyte="binary")) == ("gibibyte", "mebibyte")


@pytest.mark.parametrize(
    ("quantity", "source", "target", "expected"),
    [
        (6, "quart", "ounce", 192),  # "6 quart in ounce": US fluid ounces
        (8, "ounce", "milliliter", 236.5882365),  # "8 ounce in milliliter"
        (2, "cups", "oz", 16),
        (1, "Ounces", "L", 0.0295735295625),
    ],
)
def test_volume_an_ounce_beside_a_volume_is_the_fluid_ounce(quantity: float, source: str, target: str, expected: float) -> None:
    assert convert(quantity, source, target) == pytest.approx(expected, rel=1e-9)


def test_pressure_mb_beside_a_pressure_is_the_millibar() -> None:
    assert resolve_pair("mb", "hPa") == ("millibar", "hectopascal")
    assert resolve_pair("mb", "MB") == ("megabyte", "megabyte")


def test_mass_an_ounce_beside_a_mass_stays_the_ounce() -> None:
    assert resolve_pair("oz", "g") == ("ounce", "gram")
    assert convert(16, "ounces", "lb") == 1


def test_length_a_prefix_alone_beside_a_length_is_not_a_data_size() -> None:
    for prefix in ("G", "M", "k", "T"):
        with pytest.raises(UnknownUnitError):
            resolve_unit(prefix, beside="km")
    assert resolve_unit("K", beside="m") == "kelvin"  # K on its own, never a kilobyte
    assert completion("M to km: 3×") is None  # the model goes on by itself


def test_without_a_neighbour_a_prefix_alone_is_refused_and_a_family_is_context() -> None:
    with pytest.raises(UnknownUnitError, match="beside a data size"):
        resolve_unit("G")
    assert resolve_unit("G", family="data") == "gigabyte"
    assert resolve_unit("oz", family="volume") == "fluid_ounce"


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("G to MB: 2×", "1000=<answer>2000</answer>"),
        ("qt to oz: 6×", "32=<answer>192</answer>"),
        ("oz to mL: 8×", "29.6=<answer>236.8</answer>"),
        ("G to MiB: 8×", "1020=<answer>8160</answer>"),
        ("gb to mb: 2×", "1000=<answer>2000</answer>"),
    ],
)
def test_the_lookup_reads_a_set_up_the_same_way(text: str, rest: str) -> None:
    assert completion(text) == rest


def test_questions_written_that_way_are_trained_and_in_val_unseen() -> None:
    splits = generate_splits(1500, 50, seed=3, families=["data", "volume"], n_unseen=150)
    bare = re.compile(r"(?<![\w/])[GMKkT](?![\w/])")
    for name, questions in (("train", splits.train), ("val_unseen", splits.val_unseen)):
        data = [q for q in questions if q.family == "data" and bare.search(q.question)]
        ounce = [q for q in questions if "fluid_ounce" in (q.source_unit, q.target_unit)
                 and re.search(r"\b(oz|ounces?)\b", q.question, re.I) and not re.search(r"fl(uid)? ?oz|fluid", q.question, re.I)]
        assert data and ounce, name
        for q in data + ounce:  # the set-up names the unit meant: "GB to MB", "fl oz to cup"
            setup = q.working.split(":")[0]
            assert not bare.search(setup) and not re.search(r"(?<!fl )\boz\b", setup), (q.question, q.working)


# ------------------------------------------------------------------ conventions


def test_a_bare_ton_is_the_metric_tonne_by_default_and_short_by_choice() -> None:
    assert convert(5, "ton", "kg") == 1000 * 5
    assert convert(5, "tons", "kg", Conventions(ton="short")) == pytest.approx(4535.9237, rel=1e-12)
    assert resolve_unit("short ton") == resolve_unit("US tons") == "short_ton"
    assert resolve_unit("long ton", conventions=Conventions(ton="short")) == "long_ton"


@pytest.mark.parametrize(
    ("conventions", "source", "target", "expected"),
    [
        (DEFAULT, "KB", "B", 1000),
        (Conventions(kilobyte="binary"), "KB", "B", 1024),
        (Conventions(kilobyte="binary"), "GB", "MB", 1024),
        (Conventions(kilobyte="binary"), "kB", "B", 1000),  # SI's kB never changes
        (DEFAULT, "gallon", "L", 3.785411784),
        (Conventions(gallon="imperial"), "gal", "L", 4.54609),
        (Conventions(gallon="imperial"), "US gallon", "L", 3.785411784),
        (DEFAULT, "calories", "J", 4.184),
        (Conventions(calorie="food"), "calorie", "J", 4184),
    ],
)
def test_each_convention_switches_what_its_words_mean(conventions: Conventions, source: str, target: str, expected: float) -> None:
    assert convert(1, source, target, conventions) == pytest.approx(expected, rel=1e-9)


def test_tonne_and_metric_ton_are_set_up_as_t_never_ton() -> None:
    for spelling in ("tonne", "tonnes", "metric ton", "metric tons", "t", "ton"):
        assert set_up_symbol(resolve_unit(spelling)) == "t"
    assert set_up_symbol(resolve_unit("ton", conventions=Conventions(ton="short")), Conventions(ton="short")) == "short ton"
    for q in generate_questions(300, seed=1, families=["mass"]):
        assert not re.match(r"ton\b", q.working) and " to ton:" not in q.working, q.working


@pytest.mark.parametrize("conventions", EVERY_CONVENTION, ids=str)
def test_every_spelling_round_trips_to_its_own_unit(conventions: Conventions) -> None:
    """Every spelling (held-out ones included) reads as its unit, and the set-up written for it reads back."""
    for unit in table_views(conventions):
        for spelling in {*unit.spellings(), *unit.heldout, *unit.accepted} - set(unit.informal):
            assert resolve_unit(spelling, conventions=conventions) == unit.key, (spelling, unit.key)
        assert resolve_unit(set_up_symbol(unit.key, conventions), conventions=conventions) == unit.key


def test_generated_set_ups_read_back_as_the_question_under_another_convention() -> None:
    chosen = Conventions(ton="short", kilobyte="binary", gallon="imperial", calorie="food")
    for q in generate_questions(400, seed=2, families=["mass", "data", "volume", "energy"], conventions=chosen):
        source, target = q.working.split(":")[0].split(" to ")
        assert resolve_pair(source, target, chosen) == (q.source_unit, q.target_unit), q.working
        assert q.answer == pytest.approx(convert(q.quantity, source, target, chosen), rel=1e-12)


def test_the_task_takes_conventions_and_the_lookup_follows_them() -> None:
    assert UnitConversion().completion("ton to kg: 5×") == "1000=<answer>5000</answer>"
    short = UnitConversion(conventions={"ton": "short"})  # a run's config.yaml gives a mapping
    assert short.conventions == Conventions(ton="short")
    assert short.completion("ton to kg: 5×") == "907=<answer>4535</answer>"
    with pytest.raises(DataError, match=r"data.task.conventions.*ton.*metric, short"):
        UnitConversion(conventions={"ton": "long"})
    with pytest.raises(DataError, match="unknown conventions"):
        UnitConversion(conventions={"tons": "short"})


def test_a_runs_saved_config_keeps_its_conventions() -> None:
    from sft_lightning.tasks.flags import task_of_run_config

    saved = {"task": {"class_path": "sft_lightning.tasks.UnitConversion",
                      "init_args": {"train_size": 5, "conventions": {"ton": "short", "kilobyte": "decimal"}}}}
    assert task_of_run_config(saved).completion("ton to lb: 2×") == "2000=<answer>4000</answer>"
