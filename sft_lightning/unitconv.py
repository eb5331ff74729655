"""Deterministic unit-conversion question/answer generator.

pint is the source of truth for every conversion factor, but surface forms are
never handed to pint directly: a curated alias table maps each accepted
spelling to a canonical unit key and a pint expression. This avoids pint's
traps, each of which is pinned by a test:

* ``decade`` is a dimensionless logarithmic unit in pint (not 10 years);
  here it is ``10 * year``.
* ``acre`` is the US *survey* acre in pint (4046.8726 m^2); here it is the
  international acre ``43560 * foot ** 2`` = 4046.8564224 m^2.
* ``G`` is gauss, ``M`` is molar, ``Mb`` is megabarn, ``C`` is coulomb and
  ``F`` is farad in pint; ``KB`` and ``kmh`` are undefined.
* ``B`` is used for both byte and bel in pint's world; here ``B`` = byte.

Data sizes follow SI/IEC: kB = 1000 B, KiB = 1024 B, MB = 10**6 B, MiB = 2**20 B.
``KB`` (capital K) is ambiguous in practice (JEDEC/Windows use 1024); this module
picks **KB = 1000 B** so that KB and kB agree, and binary sizes must be spelled
KiB/MiB/GiB. ``year`` is pint's Julian year (365.25 days).

The registry uses ``decimal.Decimal`` magnitudes so that exact factors stay
exact (20 degC -> 68 degF, 1 mile -> 1609.344 m) before the final ``float``.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import math
import numbers
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "FAMILIES",
    "TEMPLATES",
    "ConversionQuestion",
    "Template",
    "UnknownFamilyError",
    "UnknownUnitError",
    "accepted_spellings",
    "convert",
    "family_of",
    "format_quantity",
    "generate_questions",
    "generate_splits",
    "normalize_question",
    "resolve_unit",
    "units_of",
]

FAMILIES: tuple[str, ...] = (
    "length",
    "mass",
    "time",
    "volume",
    "speed",
    "data",
    "area",
    "temperature",
    "energy",
    "pressure",
)

# Answers outside this range are hard to read/learn; quantities are resampled.
# The temperature family is exempt (0 and negative values are legitimate).
MIN_ABS_ANSWER: float = 0.01
MAX_ABS_ANSWER: float = 1e6
# Unit pairs whose factor lies outside this range are never asked (e.g. mm -> km),
# because almost no friendly quantity would give a readable answer.
_MIN_PAIR_FACTOR: float = 1e-3
_MAX_PAIR_FACTOR: float = 1e4
# Fraction of (quantity, source, target) triples reserved for validation by a
# stable hash, so train and validation sets never share a triple, whatever seeds.
_VALIDATION_FRACTION: float = 0.2


class UnknownUnitError(ValueError):
    """A unit spelling is not in the curated alias table (or is in the wrong family)."""


class UnknownFamilyError(ValueError):
    """A family name is not one of FAMILIES."""


@dataclass(frozen=True)
class ConversionQuestion:
    """One question with its exact (unrounded) pint answer."""

    question: str
    answer: float
    family: str
    quantity: float
    source_unit: str
    target_unit: str


@dataclass(frozen=True)
class _Unit:
    """A curated unit: pint expression plus every spelling we accept.

    ``symbols`` are case-sensitive and may appear in questions; ``extra_symbols``
    are accepted (case-sensitive) but never generated; ``extra_words`` are
    accepted case-insensitively but never generated. ``singular``/``plural`` are
    case-insensitive and used in questions.
    """

    key: str
    family: str
    pint_expr: str
    singular: str
    plural: str
    symbols: tuple[str, ...] = ()
    extra_symbols: tuple[str, ...] = ()
    extra_words: tuple[str, ...] = ()


def _u(
    key: str,
    family: str,
    pint_expr: str,
    singular: str,
    plural: str,
    symbols: tuple[str, ...] = (),
    extra_symbols: tuple[str, ...] = (),
    extra_words: tuple[str, ...] = (),
) -> _Unit:
    """Terse constructor so the table below stays readable."""
    return _Unit(key, family, pint_expr, singular, plural, symbols, extra_symbols, extra_words)


_UNITS: tuple[_Unit, ...] = (
    # length
    _u("millimeter", "length", "millimeter", "millimeter", "millimeters", ("mm",), (), ("millimetre", "millimetres")),
    _u("centimeter", "length", "centimeter", "centimeter", "centimeters", ("cm",), (), ("centimetre", "centimetres")),
    _u("meter", "length", "meter", "meter", "meters", ("m",), (), ("metre", "metres")),
    _u("kilometer", "length", "kilometer", "kilometer", "kilometers", ("km",), (), ("kilometre", "kilometres")),
    _u("inch", "length", "inch", "inch", "inches", ("in",), (), ()),
    _u("foot", "length", "foot", "foot", "feet", ("ft",), (), ()),
    _u("yard", "length", "yard", "yard", "yards", ("yd",), ("yds",), ()),
    _u("mile", "length", "mile", "mile", "miles", ("mi",), (), ()),
    # mass
    _u("milligram", "mass", "milligram", "milligram", "milligrams", ("mg",), (), ("milligramme", "milligrammes")),
    _u("gram", "mass", "gram", "gram", "grams", ("g",), (), ("gramme", "grammes")),
    _u("kilogram", "mass", "kilogram", "kilogram", "kilograms", ("kg",), ("kgs",), ("kilo", "kilos")),
    _u("tonne", "mass", "metric_ton", "metric ton", "metric tons", ("t",), (), ("tonne", "tonnes")),
    _u("ounce", "mass", "ounce", "ounce", "ounces", ("oz",), (), ()),
    _u("pound", "mass", "pound", "pound", "pounds", ("lb", "lbs"), (), ()),
    _u("stone", "mass", "stone", "stone", "stones", ("st",), (), ()),
    # time
    _u("millisecond", "time", "millisecond", "millisecond", "milliseconds", ("ms",), (), ("msec",)),
    _u("second", "time", "second", "second", "seconds", ("s", "sec"), (), ("secs",)),
    _u("minute", "time", "minute", "minute", "minutes", ("min",), (), ("mins",)),
    _u("hour", "time", "hour", "hour", "hours", ("h", "hr"), (), ("hrs",)),
    _u("day", "time", "day", "day", "days", ("d",), (), ()),
    _u("week", "time", "week", "week", "weeks", ("wk",), (), ("wks",)),
    _u("year", "time", "year", "year", "years", ("yr",), (), ("yrs",)),
    # pint's `decade` is logarithmic (dimensionless 10); the calendar decade is 10 years.
    _u("decade", "time", "10 * year", "decade", "decades", (), (), ()),
    _u("century", "time", "100 * year", "century", "centuries", (), (), ()),
    # volume (gallon/quart/pint/cup/fluid ounce are US liquid measures)
    _u("cubic_millimeter", "volume", "millimeter ** 3", "cubic millimeter", "cubic millimeters",
       ("mm³", "mm^3"), ("mm**3", "mm3"), ("cubic millimetre", "cubic millimetres")),
    _u("cubic_centimeter", "volume", "centimeter ** 3", "cubic centimeter", "cubic centimeters",
       ("cm³", "cc"), ("cm**3", "cm^3", "cm3"), ("cubic centimetre", "cubic centimetres")),
    _u("milliliter", "volume", "milliliter", "milliliter", "milliliters", ("mL", "ml"), (), ("millilitre", "millilitres")),
    _u("liter", "volume", "liter", "liter", "liters", ("L", "l"), (), ("litre", "litres")),
    _u("cubic_meter", "volume", "meter ** 3", "cubic meter", "cubic meters",
       ("m³", "m^3"), ("m**3", "m3"), ("cubic metre", "cubic metres")),
    _u("gallon", "volume", "gallon", "gallon", "gallons", ("gal",), (), ("us gallon", "us gallons")),
    _u("imperial_gallon", "volume", "imperial_gallon", "imperial gallon", "imperial gallons", (), (),
       ("uk gallon", "uk gallons")),
    _u("quart", "volume", "quart", "quart", "quarts", ("qt",), (), ()),
    _u("pint", "volume", "pint", "pint", "pints", ("pt",), (), ()),
    _u("cup", "volume", "cup", "cup", "cups", (), (), ()),
    _u("fluid_ounce", "volume", "fluid_ounce", "fluid ounce", "fluid ounces", ("fl oz",), ("floz",), ()),
    # speed
    _u("meter_per_second", "speed", "meter / second", "meter per second", "meters per second",
       ("m/s",), (), ("metre per second", "metres per second")),
    _u("kilometer_per_hour", "speed", "kilometer / hour", "kilometer per hour", "kilometers per hour",
       ("km/h", "kmh", "kph"), ("km/hr",), ("kilometre per hour", "kilometres per hour")),
    _u("mile_per_hour", "speed", "mile / hour", "mile per hour", "miles per hour",
       ("mph", "mi/h"), ("MPH", "mi/hr"), ()),
    _u("foot_per_second", "speed", "foot / second", "foot per second", "feet per second", ("ft/s",), ("fps",), ()),
    _u("knot", "speed", "knot", "knot", "knots", ("kn",), ("kt",), ()),
    # data (SI decimal prefixes and IEC binary prefixes; KB = 1000 B, see module docstring)
    _u("bit", "data", "bit", "bit", "bits", (), (), ()),
    _u("byte", "data", "byte", "byte", "bytes", ("B",), (), ()),
    _u("kilobyte", "data", "kilobyte", "kilobyte", "kilobytes", ("kB", "KB"), (), ()),
    _u("megabyte", "data", "megabyte", "megabyte", "megabytes", ("MB",), (), ()),
    _u("gigabyte", "data", "gigabyte", "gigabyte", "gigabytes", ("GB",), (), ()),
    _u("terabyte", "data", "terabyte", "terabyte", "terabytes", ("TB",), (), ()),
    _u("kibibyte", "data", "kibibyte", "kibibyte", "kibibytes", ("KiB",), (), ()),
    _u("mebibyte", "data", "mebibyte", "mebibyte", "mebibytes", ("MiB",), (), ()),
    _u("gibibyte", "data", "gibibyte", "gibibyte", "gibibytes", ("GiB",), (), ()),
    _u("megabit", "data", "megabit", "megabit", "megabits", ("Mb", "Mbit"), (), ()),
    _u("gigabit", "data", "gigabit", "gigabit", "gigabits", ("Gb", "Gbit"), (), ()),
    # area (acre and square mile are international, not pint's US survey acre)
    _u("square_centimeter", "area", "centimeter ** 2", "square centimeter", "square centimeters",
       ("cm²", "cm^2"), ("cm**2", "cm2", "sq cm"), ("square centimetre", "square centimetres")),
    _u("square_meter", "area", "meter ** 2", "square meter", "square meters",
       ("m²", "m^2"), ("m**2", "m2", "sq m"), ("square metre", "square metres")),
    _u("square_kilometer", "area", "kilometer ** 2", "square kilometer", "square kilometers",
       ("km²", "km^2"), ("km**2", "km2", "sq km"), ("square kilometre", "square kilometres")),
    _u("hectare", "area", "hectare", "hectare", "hectares", ("ha",), (), ()),
    _u("acre", "area", "43560 * foot ** 2", "acre", "acres", ("ac",), (), ()),
    _u("square_inch", "area", "inch ** 2", "square inch", "square inches",
       ("in²", "sq in"), ("in**2", "in^2"), ()),
    _u("square_foot", "area", "foot ** 2", "square foot", "square feet",
       ("ft²", "sq ft"), ("ft**2", "ft^2"), ()),
    _u("square_yard", "area", "yard ** 2", "square yard", "square yards",
       ("yd²", "sq yd"), ("yd**2", "yd^2"), ()),
    _u("square_mile", "area", "mile ** 2", "square mile", "square miles",
       ("mi²", "sq mi"), ("mi**2", "mi^2"), ()),
    # temperature (offset units: converted as absolute temperatures, not differences)
    _u("celsius", "temperature", "degC", "degree Celsius", "degrees Celsius",
       ("°C", "degC"), ("℃", "deg C", "C°"), ("celsius", "centigrade", "degrees centigrade")),
    _u("fahrenheit", "temperature", "degF", "degree Fahrenheit", "degrees Fahrenheit",
       ("°F", "degF"), ("℉", "deg F", "F°"), ("fahrenheit",)),
    _u("kelvin", "temperature", "kelvin", "kelvin", "kelvins", ("K",), (), ("degrees kelvin",)),
    # energy (calorie = thermochemical 4.184 J; Btu = pint's 1055.056 J)
    _u("joule", "energy", "joule", "joule", "joules", ("J",), (), ()),
    _u("kilojoule", "energy", "kilojoule", "kilojoule", "kilojoules", ("kJ",), (), ()),
    _u("megajoule", "energy", "megajoule", "megajoule", "megajoules", ("MJ",), (), ()),
    _u("calorie", "energy", "calorie", "calorie", "calories", ("cal",), (), ()),
    _u("kilocalorie", "energy", "kilocalorie", "kilocalorie", "kilocalories", ("kcal",), (), ()),
    _u("watt_hour", "energy", "watt_hour", "watt-hour", "watt-hours", ("Wh",), (), ("watt hour", "watt hours")),
    _u("kilowatt_hour", "energy", "kilowatt_hour", "kilowatt-hour", "kilowatt-hours", ("kWh",), (),
       ("kilowatt hour", "kilowatt hours")),
    _u("btu", "energy", "Btu", "British thermal unit", "British thermal units", ("BTU", "Btu"), (), ()),
    # pressure
    _u("pascal", "pressure", "pascal", "pascal", "pascals", ("Pa",), (), ()),
    _u("hectopascal", "pressure", "hectopascal", "hectopascal", "hectopascals", ("hPa",), (), ()),
    _u("kilopascal", "pressure", "kilopascal", "kilopascal", "kilopascals", ("kPa",), (), ()),
    _u("bar", "pressure", "bar", "bar", "bars", (), (), ()),
    _u("millibar", "pressure", "millibar", "millibar", "millibars", ("mbar",), (), ()),
    _u("atmosphere", "pressure", "atmosphere", "atmosphere", "atmospheres", ("atm",), (), ()),
    _u("psi", "pressure", "psi", "pound per square inch", "pounds per square inch", ("psi",), (), ()),
    _u("millimeter_of_mercury", "pressure", "mmHg", "millimeter of mercury", "millimeters of mercury",
       ("mmHg",), ("mm Hg",), ("millimetre of mercury", "millimetres of mercury")),
    _u("torr", "pressure", "torr", "torr", "torr", ("Torr",), (), ()),
)

# Spellings that look like units but are deliberately rejected, with the reason.
# (Note: "K" is accepted, as kelvin; "B" is accepted, as byte.)
_REJECTED: dict[str, str] = {
    "G": "'G' is gauss in pint and ambiguous for giga-; write GB (gigabyte) or Gb (gigabit)",
    "M": "'M' is molar in pint and ambiguous for mega-; write MB (megabyte) or Mb (megabit)",
    "k": "'k' alone is only a prefix; write e.g. km, kg or kB",
    "b": "'b' is ambiguous (bit or barn); write 'bit'",
    "kb": "'kb' is ambiguous (kilobit or kilobyte); write kB/KB (kilobyte)",
    "mb": "'mb' is ambiguous (millibar or megabyte); write mbar or MB",
    "C": "'C' is coulomb in pint; write °C or degC",
    "F": "'F' is farad in pint; write °F or degF",
    "month": "'month' has no fixed length; use days or weeks",
    "months": "'months' has no fixed length; use days or weeks",
}


def _clean(name: str) -> str:
    """Collapse whitespace so 'sq  ft ' and 'sq ft' are the same spelling."""
    return " ".join(name.split())


def _build_alias_tables() -> tuple[dict[str, _Unit], dict[str, _Unit], dict[str, _Unit]]:
    """Index the unit table; refuse collisions so no spelling is silently ambiguous."""
    by_key: dict[str, _Unit] = {}
    symbols: dict[str, _Unit] = {}
    words: dict[str, _Unit] = {}
    for unit in _UNITS:
        if unit.family not in FAMILIES:
            raise AssertionError(f"unit {unit.key!r} has unknown family {unit.family!r}")
        if unit.key in by_key:
            raise AssertionError(f"duplicate unit key {unit.key!r}")
        by_key[unit.key] = unit
        for sym in (*unit.symbols, *unit.extra_symbols):
            if sym in symbols and symbols[sym] is not unit:
                raise AssertionError(f"symbol {sym!r} maps to {symbols[sym].key!r} and {unit.key!r}")
            symbols[sym] = unit
        for word in (unit.key, unit.key.replace("_", " "), unit.singular, unit.plural, *unit.extra_words):
            folded = _clean(word).casefold()
            if folded in words and words[folded] is not unit:
                raise AssertionError(f"word {word!r} maps to {words[folded].key!r} and {unit.key!r}")
            words[folded] = unit
    return by_key, symbols, words


_BY_KEY, _SYMBOLS, _WORDS = _build_alias_tables()


def accepted_spellings(family: str | None = None) -> list[str]:
    """Every accepted spelling (optionally of one family), for error messages and docs."""
    if family is not None:
        _check_family(family)
    out: list[str] = []
    for unit in _UNITS:
        if family is None or unit.family == family:
            for form in (unit.key, *unit.symbols, *unit.extra_symbols, unit.singular, unit.plural, *unit.extra_words):
                if form not in out:
                    out.append(form)
    return out


def units_of(family: str) -> tuple[str, ...]:
    """Canonical unit keys of one family, in table order."""
    _check_family(family)
    return tuple(u.key for u in _UNITS if u.family == family)


def family_of(unit: str) -> str:
    """Family of a unit given in any surface form."""
    return _BY_KEY[resolve_unit(unit)].family


def _check_family(family: str) -> None:
    """Raise UnknownFamilyError naming the valid families."""
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown unit family {family!r}; expected one of: {', '.join(FAMILIES)}")


def _unknown_unit_message(name: str, family: str | None) -> str:
    """Explain what went wrong and what would have been accepted."""
    where = f" {family}" if family else ""
    head = f"unknown{where} unit {name!r}"
    if name in _REJECTED:
        head += f": {_REJECTED[name]}"
    candidates = accepted_spellings(family)
    if family is not None:
        return f"{head}; accepted {family} spellings: {', '.join(candidates)}"
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if close:
        return f"{head}; did you mean: {', '.join(close)}?"
    return f"{head}; accepted unit keys: {', '.join(_BY_KEY)}"


def resolve_unit(name: str, family: str | None = None) -> str:
    """Map any accepted surface form to its canonical unit key.

    Symbols are case-sensitive (MB is not Mb); word forms are not. If ``family``
    is given, a unit of another family is rejected too.
    """
    if not isinstance(name, str):
        raise UnknownUnitError(f"unit must be a string, got {type(name).__name__}: {name!r}")
    if family is not None:
        _check_family(family)
    cleaned = _clean(name)
    unit = _SYMBOLS.get(cleaned) or _WORDS.get(cleaned.casefold())
    if unit is None:
        raise UnknownUnitError(_unknown_unit_message(cleaned or name, family))
    if family is not None and unit.family != family:
        raise UnknownUnitError(
            f"unit {name!r} is {unit.family} ({unit.key}), not a {family} unit; "
            f"accepted {family} spellings: {', '.join(accepted_spellings(family))}"
        )
    return unit.key


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    """Build the pint registry once, lazily (creation is slow-ish).

    Decimal magnitudes keep exact factors exact (20 degC -> 68 degF).
    """
    import pint

    return pint.UnitRegistry(non_int_type=Decimal)


@functools.lru_cache(maxsize=None)
def _pint_quantity(key: str) -> Any:
    """pint Quantity for one unit of ``key`` (may carry a factor, e.g. 10 * year)."""
    return _registry().parse_expression(_BY_KEY[key].pint_expr)


def _to_decimal(value: float) -> Decimal:
    """Interpret a float by its shortest repr, so 0.1 means exactly one tenth."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise TypeError(f"value must be a real number, got {type(value).__name__}: {value!r}")
    if isinstance(value, (int, Decimal)):
        result = Decimal(value)
    else:
        result = Decimal(repr(float(value)))
    if not result.is_finite():
        raise ValueError(f"value must be finite, got {value!r}")
    return result


def convert(value: float, source: str, target: str) -> float:
    """Convert ``value`` from ``source`` to ``target`` (any surface forms) using pint."""
    src, dst = _BY_KEY[resolve_unit(source)], _BY_KEY[resolve_unit(target)]
    if src.family != dst.family:
        raise ValueError(
            f"cannot convert {source!r} ({src.family}) to {target!r} ({dst.family}): incompatible dimensions"
        )
    magnitude = _to_decimal(value)
    ureg = _registry()
    if src.family == "temperature":
        # Offset units must be built with Quantity(value, unit), never value * unit.
        result = ureg.Quantity(magnitude, _pint_quantity(src.key).units).to(_pint_quantity(dst.key).units)
        return float(result.magnitude)
    ratio = (magnitude * _pint_quantity(src.key)) / _pint_quantity(dst.key)
    return float(ratio.to("dimensionless").magnitude)


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A phrasing; ``counting`` ones ("how many X") are not used for temperature."""

    text: str
    counting: bool = False


TEMPLATES: tuple[Template, ...] = (
    Template("Convert {q} {src} to {dst}."),
    Template("How many {dst} are in {q} {src}?", counting=True),
    Template("What is the conversion of {q} {src} to {dst}?"),
    Template("Express {q} {src} as a quantity of {dst}.", counting=True),
    Template("What is {q} {src} in {dst}?"),
    Template("{q} {src} equals how many {dst}?", counting=True),
    Template("Change {q} {src} into {dst}."),
    Template("If I have {q} {src}, how many {dst} is that?", counting=True),
    Template("How much is {q} {src} in {dst}?"),
    Template("Please convert {q} {src} into {dst}."),
    Template("What do you get when you convert {q} {src} to {dst}?"),
    Template("{q} {src} is how many {dst}?", counting=True),
    Template("Give {q} {src} in {dst}."),
    Template("What is the equivalent of {q} {src} in {dst}?"),
    Template("Turn {q} {src} into {dst}."),
    Template("{q} {src} = ? {dst}"),
)


def format_quantity(quantity: float) -> str:
    """Render a quantity as a person would write it: 5, 2.5, 12.75, -40."""
    if float(quantity).is_integer():
        return str(int(quantity))
    return repr(float(quantity))


def normalize_question(text: str) -> str:
    """Key used for de-duplication: case, spacing and final punctuation ignored."""
    return " ".join(text.casefold().split()).rstrip(".?! ")


def _pick_unit_form(rng: random.Random, unit: _Unit, singular: bool) -> str:
    """Choose a surface form: a word (singular/plural as the number demands) or a symbol."""
    word = unit.singular if singular else unit.plural
    forms = [word, word, *unit.symbols] if unit.symbols else [word]
    return rng.choice(forms)


def _render(rng: random.Random, template: Template, quantity: float, src: _Unit, dst: _Unit) -> str:
    """Fill a template; singular source unit only when the quantity is exactly +-1."""
    text = template.text.format(
        q=format_quantity(quantity),
        src=_pick_unit_form(rng, src, singular=abs(quantity) == 1),
        dst=_pick_unit_form(rng, dst, singular=False),
    )
    return text[0].upper() + text[1:]


# --------------------------------------------------------------------------- quantities


_ROUND_NUMBERS = (40, 50, 60, 75, 80, 100, 120, 150, 200, 250, 300, 400, 500, 750, 1000)


@functools.lru_cache(maxsize=1)
def _quantity_support() -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Everyday quantities, as three disjoint sorted sets: integers (1..30 and round numbers
    up to 1000), halves (0.5..19.5) and tenths (0.1..9.9, not halves).

    "How many meters are in 6 km?" is the typical question: people convert small or round
    amounts. Keeping operands small also keeps the arithmetic within reach of a ~100M-parameter
    model, so accuracy measures unit knowledge rather than long multiplication.
    """
    integers = tuple(float(k) for k in (*range(1, 31), *_ROUND_NUMBERS))
    halves = tuple(k / 2 for k in range(1, 40, 2))
    tenths = tuple(k / 10 for k in range(1, 100) if k % 5)
    return integers, halves, tenths


def _sample_quantity(rng: random.Random, allow_negative: bool) -> float:
    """45% integers 1-12, 20% integers 13-30, 10% round numbers, 15% halves, 10% tenths."""
    _, halves, tenths = _quantity_support()
    r = rng.random()
    if r < 0.45:
        q = float(rng.randint(1, 12))
    elif r < 0.65:
        q = float(rng.randint(13, 30))
    elif r < 0.75:
        q = float(rng.choice(_ROUND_NUMBERS))
    elif r < 0.90:
        q = rng.choice(halves)
    else:
        q = rng.choice(tenths)
    if allow_negative and rng.random() < 0.15:
        q = -q
    return q


def _answer_in_range(family: str, answer: float) -> bool:
    """Readable-magnitude rule; temperature is exempt."""
    if not math.isfinite(answer):
        return False
    return family == "temperature" or MIN_ABS_ANSWER <= abs(answer) <= MAX_ABS_ANSWER


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class _Pair:
    """An allowed (source, target) pair and its unit factor (None for offset units)."""

    src: _Unit
    dst: _Unit
    factor: float | None


def _selected_units(
    families: Sequence[str] | None, units: Mapping[str, Sequence[str]] | None
) -> dict[str, list[_Unit]]:
    """Validate families/units up front and return the units to use per family (FAMILIES order)."""
    if isinstance(families, str):
        families = (families,)
    requested = list(FAMILIES) if families is None else list(families)
    if not requested:
        raise ValueError(f"families must not be empty; choose from: {', '.join(FAMILIES)}")
    for fam in requested:
        _check_family(fam)
    restriction: dict[str, list[str]] = {}
    for fam, names in (units or {}).items():
        _check_family(fam)
        if isinstance(names, str):
            names = (names,)
        keys: list[str] = []
        for name in names:
            key = resolve_unit(name, family=fam)
            if key not in keys:
                keys.append(key)
        restriction[fam] = keys
    selected: dict[str, list[_Unit]] = {}
    for fam in FAMILIES:
        if fam not in requested:
            continue
        keys = restriction.get(fam)
        selected[fam] = [u for u in _UNITS if u.family == fam and (keys is None or u.key in keys)]
    return selected


def _allowed_pairs(selected: Mapping[str, Sequence[_Unit]]) -> dict[str, list[_Pair]]:
    """Unit pairs per family whose factor keeps answers readable; error if a family has none."""
    pairs: dict[str, list[_Pair]] = {}
    for fam, fam_units in selected.items():
        fam_pairs: list[_Pair] = []
        for src in fam_units:
            for dst in fam_units:
                if src is dst:
                    continue
                if fam == "temperature":
                    fam_pairs.append(_Pair(src, dst, None))
                    continue
                factor = _pair_factor(src.key, dst.key)
                if _MIN_PAIR_FACTOR <= factor <= _MAX_PAIR_FACTOR:
                    fam_pairs.append(_Pair(src, dst, factor))
        if not fam_pairs:
            names = ", ".join(u.key for u in fam_units) or "(none)"
            raise ValueError(
                f"family {fam!r} has no usable unit pair with units [{names}]: need at least two units "
                f"whose conversion factor lies within [{_MIN_PAIR_FACTOR:g}, {_MAX_PAIR_FACTOR:g}]"
            )
        pairs[fam] = fam_pairs
    return pairs


@functools.lru_cache(maxsize=None)
def _pair_factor(src_key: str, dst_key: str) -> float:
    """Linear factor between two non-offset units (cached: pairs are reused a lot)."""
    return convert(1, src_key, dst_key)


def _pair_capacity(pair: _Pair) -> int:
    """How many distinct quantities give an in-range answer for this pair."""
    integers, one_dp, two_dp = _quantity_support()
    if pair.factor is None:
        n = len(integers) + len(one_dp) + len(two_dp)
        return n if pair.src.key == "kelvin" else 2 * n
    lo, hi = MIN_ABS_ANSWER / pair.factor, MAX_ABS_ANSWER / pair.factor
    total = 0
    for values in (integers, one_dp, two_dp):
        total += bisect.bisect_right(values, hi) - bisect.bisect_left(values, lo)
    return total


def _triple(quantity: float, src: str, dst: str) -> tuple[float, str, str]:
    """Identity of a question regardless of phrasing."""
    return (quantity, src, dst)


def _is_validation_triple(triple: tuple[float, str, str]) -> bool:
    """Stable (seed- and process-independent) hash partition of triples."""
    digest = hashlib.blake2b(f"{triple[0]!r}|{triple[1]}|{triple[2]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < _VALIDATION_FRACTION


def _question_stream(
    rng: random.Random, pairs: Mapping[str, Sequence[_Pair]]
) -> Iterator[ConversionQuestion]:
    """Endless stream of questions: family uniform, pair uniform, friendly quantity."""
    family_names = list(pairs)
    general = [t for t in TEMPLATES if not t.counting]
    while True:
        fam = rng.choice(family_names)
        pair = rng.choice(pairs[fam])
        allow_negative = fam == "temperature" and pair.src.key != "kelvin"
        for _ in range(50):
            quantity = _sample_quantity(rng, allow_negative)
            answer = convert(quantity, pair.src.key, pair.dst.key)
            if _answer_in_range(fam, answer):
                break
        else:
            continue
        template = rng.choice(general if fam == "temperature" else TEMPLATES)
        yield ConversionQuestion(
            question=_render(rng, template, quantity, pair.src, pair.dst),
            answer=answer,
            family=fam,
            quantity=quantity,
            source_unit=pair.src.key,
            target_unit=pair.dst.key,
        )


def _prepare(
    n: int, families: Sequence[str] | None, units: Mapping[str, Sequence[str]] | None
) -> dict[str, list[_Pair]]:
    """Validate everything and check capacity before any question is drawn."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of questions must be a non-negative int, got {n!r}")
    pairs = _allowed_pairs(_selected_units(families, units))
    capacity = sum(_pair_capacity(p) for fam_pairs in pairs.values() for p in fam_pairs)
    if n > capacity:
        raise ValueError(
            f"cannot generate {n} unique questions: only {capacity} distinct (quantity, source, target) "
            f"combinations exist for families {list(pairs)}; widen families/units or ask for fewer"
        )
    return pairs


def _max_draws(n: int) -> int:
    """Give up (with a clear error) instead of looping forever near capacity."""
    return 60 * n + 10_000


def generate_questions(
    n: int,
    seed: int,
    families: Sequence[str] | None = None,
    units: Mapping[str, Sequence[str]] | None = None,
) -> list[ConversionQuestion]:
    """``n`` unique questions (distinct text and distinct (quantity, src, dst)), deterministic in ``seed``."""
    pairs = _prepare(n, families, units)
    rng = random.Random(seed)
    out: list[ConversionQuestion] = []
    seen_triples: set[tuple[float, str, str]] = set()
    seen_texts: set[str] = set()
    stream = _question_stream(rng, pairs)
    for _ in range(_max_draws(n)):
        if len(out) >= n:
            break
        q = next(stream)
        triple, text = _triple(q.quantity, q.source_unit, q.target_unit), normalize_question(q.question)
        if triple in seen_triples or text in seen_texts:
            continue
        seen_triples.add(triple)
        seen_texts.add(text)
        out.append(q)
    if len(out) < n:
        raise ValueError(f"could only generate {len(out)} of {n} unique questions; widen families/units")
    return out


def generate_splits(
    n_train: int,
    n_val: int,
    seed: int,
    families: Sequence[str] | None = None,
    units: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[ConversionQuestion], list[ConversionQuestion]]:
    """Train/validation lists, disjoint by normalised text and by (quantity, src, dst).

    Each triple is assigned to train or validation by a stable hash (about 20%
    validation), so even splits drawn with different seeds never share a triple.
    """
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 0:
        raise ValueError(f"n_val must be a non-negative int, got {n_val!r}")
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0:
        raise ValueError(f"n_train must be a non-negative int, got {n_train!r}")
    pairs = _prepare(n_train + n_val, families, units)
    rng = random.Random(seed)
    train: list[ConversionQuestion] = []
    val: list[ConversionQuestion] = []
    seen_triples: set[tuple[float, str, str]] = set()
    seen_texts: set[str] = set()
    stream = _question_stream(rng, pairs)
    # Validation triples are ~20% of draws, so allow proportionally more draws for them.
    budget = _max_draws(n_train) + _max_draws(n_val) * int(1 / _VALIDATION_FRACTION)
    for _ in range(budget):
        if len(train) >= n_train and len(val) >= n_val:
            break
        q = next(stream)
        triple, text = _triple(q.quantity, q.source_unit, q.target_unit), normalize_question(q.question)
        if triple in seen_triples or text in seen_texts:
            continue
        target, limit = (val, n_val) if _is_validation_triple(triple) else (train, n_train)
        if len(target) >= limit:
            continue
        seen_triples.add(triple)
        seen_texts.add(text)
        target.append(q)
    if len(train) < n_train or len(val) < n_val:
        raise ValueError(
            f"could only generate {len(train)}/{n_train} train and {len(val)}/{n_val} validation questions "
            f"(validation holds ~{_VALIDATION_FRACTION:.0%} of all combinations); widen families/units or ask for fewer"
        )
    return train, val
