"""The unit table: every unit the generator asks about, every spelling of it, and its size.

pint is the source of truth for every conversion factor, but surface forms are never handed to
pint directly: this table maps each accepted spelling to a canonical unit key and a pint
expression. That avoids pint's traps, each of which is pinned by a test:

* ``decade`` is a dimensionless logarithmic unit in pint (not 10 years); here it is ``10 * year``.
* ``acre`` is the US *survey* acre in pint (4046.8726 m^2); here it is the international acre
  ``43560 * foot ** 2`` = 4046.8564224 m^2.
* ``G`` is gauss, ``M`` is molar, ``Mb`` is megabarn, ``C`` is coulomb and ``F`` is farad in pint;
  ``KB`` and ``kmh`` are undefined.
* ``B`` is used for both byte and bel in pint's world; here ``B`` = byte.

Conventions (where usage varies, the table follows pint's definition and says so):

* Data sizes follow SI/IEC: kB = 1000 B, KiB = 1024 B, MB = 10**6 B, MiB = 2**20 B. ``KB``
  (capital K) is ambiguous in practice (JEDEC/Windows use 1024); here **KB = 1000 B**, so KB and
  kB agree, and binary sizes are spelled KiB/MiB/GiB/TiB. A bit is 1/8 byte.
* ``year`` is the Julian year (365.25 days, pint's ``year``); ``month`` is a twelfth of it,
  30.4375 days (pint's ``month``): the average month, not a calendar one.
* ``ton`` is the US short ton, 2000 lb (pint's ``ton``); ``tonne``/``metric ton``/``t`` is
  1000 kg; the UK long ton (2240 lb) must be asked for as ``long ton``.
* Volumes named gallon, quart, pint, cup, fluid ounce, tablespoon and teaspoon are US customary
  (liquid) measures (pint's defaults); the UK gallon is ``imperial gallon``.
* ``calorie`` is the thermochemical calorie, 4.184 J (pint's); ``kcal`` 4184 J; ``BTU`` pint's
  1055.056 J. Temperatures are absolute readings (20 degC -> 68 degF), not differences.

Spellings: ``names`` are (singular, plural) word pairs, the first being the primary one (words
match case-insensitively); ``symbols`` are case-sensitive. Both are written into generated
questions. ``accepted`` spellings resolve but are never generated (``mm**3``); ``informal`` ones
are generated but do not resolve, because out of a question's context they mean something
else (``C`` is coulomb to pint). ``heldout`` spellings are never written into *training*
questions: the ``val_unseen`` validation set uses them, to measure whether the model learned
the unit or only the string. ``tier`` says how often people ask about a unit (1 everyday,
2 common, 3 rare); the generator samples pairs in proportion.
"""

from __future__ import annotations

import difflib
import functools
import numbers
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

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


class UnknownUnitError(ValueError):
    """A unit spelling is not in the curated alias table (or is in the wrong family)."""


class UnknownFamilyError(ValueError):
    """A family name is not one of FAMILIES."""


@dataclass(frozen=True)
class Unit:
    """A curated unit: its pint expression and every spelling of it (see the module docstring)."""

    key: str
    family: str
    pint_expr: str
    names: tuple[tuple[str, str], ...]
    symbols: tuple[str, ...] = ()
    tier: int = 1
    accepted: tuple[str, ...] = ()
    informal: tuple[str, ...] = ()
    heldout: frozenset[str] = frozenset()

    @property
    def singular(self) -> str:
        return self.names[0][0]

    @property
    def plural(self) -> str:
        return self.names[0][1]

    @property
    def symbol(self) -> str:
        """The shortest standard way to write it, used in worked answers ("ft to m: 6×0.305=")."""
        return self.symbols[0] if self.symbols else self.singular

    def spellings(self) -> tuple[str, ...]:
        """Every spelling written into questions (held-out ones included), words before symbols."""
        words = [w for pair in self.names for w in pair]
        return tuple(dict.fromkeys([*words, *self.symbols, *self.informal]))


def _u(
    key: str,
    family: str,
    pint_expr: str,
    names: list[tuple[str, str]] | tuple[str, str],
    symbols: tuple[str, ...] = (),
    tier: int = 1,
    accepted: tuple[str, ...] = (),
    informal: tuple[str, ...] = (),
    heldout: tuple[str, ...] = (),
) -> Unit:
    """Terse constructor so the table below stays readable."""
    pairs = tuple(names) if isinstance(names, list) else (names,)
    return Unit(key, family, pint_expr, pairs, symbols, tier, accepted, informal, frozenset(heldout))


UNITS: tuple[Unit, ...] = (
    # length
    _u("micrometer", "length", "micrometer", [("micrometer", "micrometers"), ("micrometre", "micrometres"), ("micron", "microns")],
       ("µm", "um"), tier=3, accepted=("μm",)),
    _u("millimeter", "length", "millimeter", [("millimeter", "millimeters"), ("millimetre", "millimetres")], ("mm",)),
    _u("centimeter", "length", "centimeter", [("centimeter", "centimeters"), ("centimetre", "centimetres")], ("cm",)),
    _u("meter", "length", "meter", [("meter", "meters"), ("metre", "metres")], ("m",)),
    _u("kilometer", "length", "kilometer", [("kilometer", "kilometers"), ("kilometre", "kilometres")], ("km",),
       accepted=("kms",), heldout=("kilometre", "kilometres")),
    _u("inch", "length", "inch", ("inch", "inches"), ("in",), accepted=("ins",)),
    _u("foot", "length", "foot", ("foot", "feet"), ("ft",)),
    _u("yard", "length", "yard", ("yard", "yards"), ("yd", "yds"), heldout=("yds",)),
    _u("mile", "length", "mile", ("mile", "miles"), ("mi",)),
    _u("nautical_mile", "length", "nautical_mile", ("nautical mile", "nautical miles"), ("nmi",), tier=2),
    # mass
    _u("microgram", "mass", "microgram", [("microgram", "micrograms"), ("microgramme", "microgrammes")], ("µg", "mcg"),
       tier=3, accepted=("μg", "ug")),
    _u("milligram", "mass", "milligram", [("milligram", "milligrams"), ("milligramme", "milligrammes")], ("mg",)),
    _u("gram", "mass", "gram", [("gram", "grams"), ("gramme", "grammes")], ("g",), accepted=("gr",)),
    _u("kilogram", "mass", "kilogram", [("kilogram", "kilograms"), ("kilo", "kilos"), ("kilogramme", "kilogrammes")],
       ("kg", "kgs"), heldout=("kgs", "kilogramme", "kilogrammes")),
    _u("tonne", "mass", "metric_ton", [("metric ton", "metric tons"), ("tonne", "tonnes")], ("t",), tier=2),
    _u("ton", "mass", "ton", [("ton", "tons"), ("short ton", "short tons"), ("US ton", "US tons")], (), tier=2),
    _u("long_ton", "mass", "long_ton", [("long ton", "long tons"), ("imperial ton", "imperial tons")], (), tier=3),
    _u("ounce", "mass", "ounce", ("ounce", "ounces"), ("oz",)),
    _u("pound", "mass", "pound", ("pound", "pounds"), ("lb", "lbs")),
    _u("stone", "mass", "stone", ("stone", "stone"), ("st",), tier=2, accepted=("stones",)),
    # time
    _u("millisecond", "time", "millisecond", ("millisecond", "milliseconds"), ("ms",), tier=2, accepted=("msec", "msecs")),
    _u("second", "time", "second", ("second", "seconds"), ("s", "sec", "secs")),
    _u("minute", "time", "minute", ("minute", "minutes"), ("min", "mins"), heldout=("mins",)),
    _u("hour", "time", "hour", ("hour", "hours"), ("h", "hr", "hrs"), heldout=("hrs",)),
    _u("day", "time", "day", ("day", "days"), ("d",)),
    _u("week", "time", "week", ("week", "weeks"), ("wk", "wks")),
    _u("month", "time", "month", ("month", "months"), ("mo",)),
    _u("year", "time", "year", ("year", "years"), ("yr", "yrs")),
    # pint's `decade` is logarithmic (dimensionless 10); the calendar decade is 10 years.
    _u("decade", "time", "10 * year", ("decade", "decades"), (), tier=2),
    _u("century", "time", "100 * year", ("century", "centuries"), (), tier=2),
    # volume (gallon, quart, pint, cup, fluid ounce, tablespoon, teaspoon: US customary)
    _u("cubic_millimeter", "volume", "millimeter ** 3", [("cubic millimeter", "cubic millimeters"), ("cubic millimetre", "cubic millimetres")],
       ("mm³", "mm^3"), tier=3, accepted=("mm**3", "mm3")),
    _u("cubic_centimeter", "volume", "centimeter ** 3", [("cubic centimeter", "cubic centimeters"), ("cubic centimetre", "cubic centimetres")],
       ("cm³", "cc"), tier=2, accepted=("cm**3", "cm^3", "cm3")),
    _u("milliliter", "volume", "milliliter", [("milliliter", "milliliters"), ("millilitre", "millilitres")], ("mL", "ml"),
       heldout=("millilitre", "millilitres")),
    _u("liter", "volume", "liter", [("liter", "liters"), ("litre", "litres")], ("L", "l")),
    _u("cubic_meter", "volume", "meter ** 3", [("cubic meter", "cubic meters"), ("cubic metre", "cubic metres")],
       ("m³", "m^3"), tier=2, accepted=("m**3", "m3")),
    _u("cubic_inch", "volume", "inch ** 3", ("cubic inch", "cubic inches"), ("in³", "cu in"), tier=3, accepted=("in^3",)),
    _u("cubic_foot", "volume", "foot ** 3", ("cubic foot", "cubic feet"), ("ft³", "cu ft"), tier=2, accepted=("ft^3",)),
    _u("gallon", "volume", "gallon", [("gallon", "gallons"), ("US gallon", "US gallons")], ("gal",)),
    _u("imperial_gallon", "volume", "imperial_gallon", [("imperial gallon", "imperial gallons"), ("UK gallon", "UK gallons")], (),
       tier=2),
    _u("quart", "volume", "quart", ("quart", "quarts"), ("qt",)),
    _u("pint", "volume", "pint", ("pint", "pints"), ("pt",)),
    _u("cup", "volume", "cup", ("cup", "cups"), ()),
    _u("fluid_ounce", "volume", "fluid_ounce", ("fluid ounce", "fluid ounces"), ("fl oz",), accepted=("floz",)),
    _u("tablespoon", "volume", "tablespoon", ("tablespoon", "tablespoons"), ("tbsp", "tbs"), tier=2, accepted=("Tbsp",), heldout=("tbs",)),
    _u("teaspoon", "volume", "teaspoon", ("teaspoon", "teaspoons"), ("tsp",), tier=2),
    # speed
    _u("meter_per_second", "speed", "meter / second", [("meter per second", "meters per second"), ("metre per second", "metres per second")],
       ("m/s",), heldout=("metre per second", "metres per second")),
    _u("kilometer_per_hour", "speed", "kilometer / hour",
       [("kilometer per hour", "kilometers per hour"), ("kilometre per hour", "kilometres per hour")],
       ("km/h", "kmh", "kph"), accepted=("km/hr",), heldout=("kph",)),
    _u("mile_per_hour", "speed", "mile / hour", ("mile per hour", "miles per hour"), ("mph", "mi/h"), accepted=("MPH", "mi/hr")),
    _u("foot_per_second", "speed", "foot / second", ("foot per second", "feet per second"), ("ft/s",), tier=2, accepted=("fps",)),
    _u("knot", "speed", "knot", ("knot", "knots"), ("kn", "kt"), tier=2),
    # data (SI decimal prefixes and IEC binary prefixes; KB = 1000 B, see the module docstring)
    _u("bit", "data", "bit", ("bit", "bits"), ()),
    _u("byte", "data", "byte", ("byte", "bytes"), ("B",)),
    _u("kilobit", "data", "kilobit", ("kilobit", "kilobits"), ("kbit",), tier=3),
    _u("kilobyte", "data", "kilobyte", ("kilobyte", "kilobytes"), ("kB", "KB")),
    _u("megabyte", "data", "megabyte", ("megabyte", "megabytes"), ("MB",)),
    _u("gigabyte", "data", "gigabyte", ("gigabyte", "gigabytes"), ("GB",)),
    _u("terabyte", "data", "terabyte", ("terabyte", "terabytes"), ("TB",)),
    _u("petabyte", "data", "petabyte", ("petabyte", "petabytes"), ("PB",), tier=3),
    _u("kibibyte", "data", "kibibyte", ("kibibyte", "kibibytes"), ("KiB",), tier=2),
    _u("mebibyte", "data", "mebibyte", ("mebibyte", "mebibytes"), ("MiB",), tier=2),
    _u("gibibyte", "data", "gibibyte", ("gibibyte", "gibibytes"), ("GiB",), tier=2),
    _u("tebibyte", "data", "tebibyte", ("tebibyte", "tebibytes"), ("TiB",), tier=3),
    _u("megabit", "data", "megabit", ("megabit", "megabits"), ("Mb", "Mbit"), tier=2, heldout=("Mbit",)),
    _u("gigabit", "data", "gigabit", ("gigabit", "gigabits"), ("Gb", "Gbit"), tier=2),
    # area (acre and square mile are international, not pint's US survey acre)
    _u("square_millimeter", "area", "millimeter ** 2", [("square millimeter", "square millimeters"), ("square millimetre", "square millimetres")],
       ("mm²", "mm^2"), tier=3, accepted=("mm**2", "mm2", "sq mm")),
    _u("square_centimeter", "area", "centimeter ** 2", [("square centimeter", "square centimeters"), ("square centimetre", "square centimetres")],
       ("cm²", "cm^2", "sq cm"), tier=2, accepted=("cm**2", "cm2")),
    _u("square_meter", "area", "meter ** 2", [("square meter", "square meters"), ("square metre", "square metres")],
       ("m²", "m^2", "sq m"), accepted=("m**2", "m2")),
    _u("square_kilometer", "area", "kilometer ** 2", [("square kilometer", "square kilometers"), ("square kilometre", "square kilometres")],
       ("km²", "km^2", "sq km"), accepted=("km**2", "km2"), heldout=("square kilometre", "square kilometres")),
    _u("hectare", "area", "hectare", ("hectare", "hectares"), ("ha",)),
    _u("acre", "area", "43560 * foot ** 2", ("acre", "acres"), ("ac",)),
    _u("square_inch", "area", "inch ** 2", ("square inch", "square inches"), ("in²", "sq in"), tier=2, accepted=("in**2", "in^2")),
    _u("square_foot", "area", "foot ** 2", ("square foot", "square feet"), ("ft²", "sq ft", "ft^2"), accepted=("ft**2",),
       heldout=("ft²",)),
    _u("square_yard", "area", "yard ** 2", ("square yard", "square yards"), ("yd²", "sq yd"), tier=2, accepted=("yd**2", "yd^2")),
    _u("square_mile", "area", "mile ** 2", ("square mile", "square miles"), ("mi²", "sq mi"), tier=2, accepted=("mi**2", "mi^2")),
    # temperature (offset units: converted as absolute temperatures, not differences)
    _u("celsius", "temperature", "degC", [("degree Celsius", "degrees Celsius"), ("Celsius", "Celsius"), ("degree C", "degrees C"),
                                         ("centigrade", "centigrade")],
       ("°C", "degC"), accepted=("℃", "deg C", "C°", "degrees centigrade"), informal=("C",), heldout=("centigrade",)),
    _u("fahrenheit", "temperature", "degF", [("degree Fahrenheit", "degrees Fahrenheit"), ("Fahrenheit", "Fahrenheit"),
                                            ("degree F", "degrees F")],
       ("°F", "degF"), accepted=("℉", "deg F", "F°"), informal=("F",), heldout=("degree F", "degrees F")),
    _u("kelvin", "temperature", "kelvin", [("kelvin", "kelvin"), ("kelvin", "kelvins")], ("K",), accepted=("degrees kelvin",)),
    # energy (calorie = thermochemical 4.184 J; Btu = pint's 1055.056 J)
    _u("joule", "energy", "joule", ("joule", "joules"), ("J",)),
    _u("kilojoule", "energy", "kilojoule", ("kilojoule", "kilojoules"), ("kJ",)),
    _u("megajoule", "energy", "megajoule", ("megajoule", "megajoules"), ("MJ",), tier=2),
    _u("calorie", "energy", "calorie", ("calorie", "calories"), ("cal",)),
    _u("kilocalorie", "energy", "kilocalorie", ("kilocalorie", "kilocalories"), ("kcal",)),
    _u("watt_hour", "energy", "watt_hour", [("watt-hour", "watt-hours"), ("watt hour", "watt hours")], ("Wh",), tier=2),
    _u("kilowatt_hour", "energy", "kilowatt_hour", [("kilowatt-hour", "kilowatt-hours"), ("kilowatt hour", "kilowatt hours")], ("kWh",),
       heldout=("kilowatt hour", "kilowatt hours")),
    _u("btu", "energy", "Btu", ("British thermal unit", "British thermal units"), ("BTU", "Btu"), tier=2, heldout=("Btu",)),
    # pressure
    _u("pascal", "pressure", "pascal", ("pascal", "pascals"), ("Pa",), tier=2),
    _u("hectopascal", "pressure", "hectopascal", ("hectopascal", "hectopascals"), ("hPa",)),
    _u("kilopascal", "pressure", "kilopascal", ("kilopascal", "kilopascals"), ("kPa",)),
    _u("bar", "pressure", "bar", ("bar", "bars"), ()),
    _u("millibar", "pressure", "millibar", ("millibar", "millibars"), ("mbar",), tier=2, heldout=("millibar", "millibars")),
    _u("atmosphere", "pressure", "atmosphere", ("atmosphere", "atmospheres"), ("atm",)),
    _u("psi", "pressure", "psi", ("pound per square inch", "pounds per square inch"), ("psi",)),
    _u("millimeter_of_mercury", "pressure", "mmHg", [("millimeter of mercury", "millimeters of mercury"),
                                                     ("millimetre of mercury", "millimetres of mercury")],
       ("mmHg",), tier=2, accepted=("mm Hg",)),
    _u("inch_of_mercury", "pressure", "inHg", ("inch of mercury", "inches of mercury"), ("inHg",), tier=3, accepted=("in Hg",)),
    _u("torr", "pressure", "torr", ("torr", "torr"), ("Torr",), tier=3),
)

# Spellings that look like units but are deliberately rejected, with the reason.
# (Note: "K" is accepted, as kelvin; "B" is accepted, as byte.)
_REJECTED: dict[str, str] = {
    "G": "'G' is gauss in pint and ambiguous for giga-; write GB (gigabyte) or Gb (gigabit)",
    "M": "'M' is molar in pint and ambiguous for mega-; write MB (megabyte) or Mb (megabit)",
    "k": "'k' alone is only a prefix; write e.g. km, kg or kB",
    "b": "'b' is ambiguous (bit or barn); write 'bit'",
    "kb": "'kb' is ambiguous (kilobit or kilobyte); write kB/KB (kilobyte) or kbit",
    "mb": "'mb' is ambiguous (millibar or megabyte); write mbar or MB",
    "C": "'C' is coulomb in pint; write °C or degC",
    "F": "'F' is farad in pint; write °F or degF",
}


def _clean(name: str) -> str:
    """Collapse whitespace so 'sq  ft ' and 'sq ft' are the same spelling."""
    return " ".join(name.split())


def _build_alias_tables() -> tuple[dict[str, Unit], dict[str, Unit], dict[str, Unit]]:
    """Index the unit table; refuse collisions so no spelling is silently ambiguous."""
    by_key: dict[str, Unit] = {}
    symbols: dict[str, Unit] = {}
    words: dict[str, Unit] = {}
    for unit in UNITS:
        if unit.family not in FAMILIES:
            raise AssertionError(f"unit {unit.key!r} has unknown family {unit.family!r}")
        if unit.key in by_key:
            raise AssertionError(f"duplicate unit key {unit.key!r}")
        if not unit.heldout <= set(unit.spellings()):
            raise AssertionError(f"unit {unit.key!r}: held-out spellings must be generated spellings")
        by_key[unit.key] = unit
        for sym in (*unit.symbols, *unit.accepted):
            if sym in symbols and symbols[sym] is not unit:
                raise AssertionError(f"symbol {sym!r} maps to {symbols[sym].key!r} and {unit.key!r}")
            symbols[sym] = unit
        names = [w for pair in unit.names for w in pair]
        for word in (unit.key, unit.key.replace("_", " "), *names, *unit.accepted):
            folded = _clean(word).casefold()
            if folded in words and words[folded] is not unit:
                raise AssertionError(f"word {word!r} maps to {words[folded].key!r} and {unit.key!r}")
            words[folded] = unit
    return by_key, symbols, words


BY_KEY, _SYMBOLS, _WORDS = _build_alias_tables()


def unit(key: str) -> Unit:
    """The table entry of a canonical key."""
    return BY_KEY[key]


def accepted_spellings(family: str | None = None) -> list[str]:
    """Every accepted spelling (optionally of one family), for error messages and docs."""
    if family is not None:
        check_family(family)
    out: list[str] = []
    for u in UNITS:
        if family is None or u.family == family:
            names = [w for pair in u.names for w in pair]
            for form in (u.key, *u.symbols, *names, *u.accepted):
                if form not in out:
                    out.append(form)
    return out


def units_of(family: str) -> tuple[str, ...]:
    """Canonical unit keys of one family, in table order."""
    check_family(family)
    return tuple(u.key for u in UNITS if u.family == family)


def family_of(name: str) -> str:
    """Family of a unit given in any surface form."""
    return BY_KEY[resolve_unit(name)].family


def check_family(family: str) -> None:
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
    return f"{head}; accepted unit keys: {', '.join(BY_KEY)}"


def resolve_unit(name: str, family: str | None = None) -> str:
    """Map any accepted surface form to its canonical unit key.

    Symbols are case-sensitive (MB is not Mb); word forms are not. If ``family`` is given, a
    unit of another family is rejected too.
    """
    if not isinstance(name, str):
        raise UnknownUnitError(f"unit must be a string, got {type(name).__name__}: {name!r}")
    if family is not None:
        check_family(family)
    cleaned = _clean(name)
    found = _SYMBOLS.get(cleaned) or _WORDS.get(cleaned.casefold())
    if found is None:
        raise UnknownUnitError(_unknown_unit_message(cleaned or name, family))
    if family is not None and found.family != family:
        raise UnknownUnitError(
            f"unit {name!r} is {found.family} ({found.key}), not a {family} unit; "
            f"accepted {family} spellings: {', '.join(accepted_spellings(family))}"
        )
    return found.key


# --------------------------------------------------------------------------- conversion


@functools.lru_cache(maxsize=1)
def registry() -> Any:
    """The pint registry, built once, lazily (creation is slow-ish).

    Decimal magnitudes keep exact factors exact (20 degC -> 68 degF, 1 mile -> 1609.344 m).
    """
    import pint

    return pint.UnitRegistry(non_int_type=Decimal)


@functools.cache
def _pint_quantity(key: str) -> Any:
    """pint Quantity for one unit of ``key`` (may carry a factor, e.g. 10 * year)."""
    return registry().parse_expression(BY_KEY[key].pint_expr)


def _to_decimal(value: float) -> Decimal:
    """Interpret a float by its shortest repr, so 0.1 means exactly one tenth."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise TypeError(f"value must be a real number, got {type(value).__name__}: {value!r}")
    result = Decimal(value) if isinstance(value, (int, Decimal)) else Decimal(repr(float(value)))
    if not result.is_finite():
        raise ValueError(f"value must be finite, got {value!r}")
    return result


def convert(value: float, source: str, target: str) -> float:
    """Convert ``value`` from ``source`` to ``target`` (any surface forms) using pint."""
    src, dst = BY_KEY[resolve_unit(source)], BY_KEY[resolve_unit(target)]
    if src.family != dst.family:
        raise ValueError(f"cannot convert {source!r} ({src.family}) to {target!r} ({dst.family}): incompatible dimensions")
    magnitude = _to_decimal(value)
    ureg = registry()
    if src.family == "temperature":
        # Offset units must be built with Quantity(value, unit), never value * unit.
        result = ureg.Quantity(magnitude, _pint_quantity(src.key).units).to(_pint_quantity(dst.key).units)
        return float(result.magnitude)
    ratio = (magnitude * _pint_quantity(src.key)) / _pint_quantity(dst.key)
    return float(ratio.to("dimensionless").magnitude)


@functools.cache
def pair_factor(src_key: str, dst_key: str) -> float:
    """Linear factor between two non-offset units (cached: pairs are reused a lot)."""
    return convert(1, src_key, dst_key)
