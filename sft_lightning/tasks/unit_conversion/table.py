"""The unit table: every unit the generator asks about, every spelling of it (``Unit``), and its pint expression.

pint gives every factor but never reads a spelling (docs/design.md, "The unit table"); words that vary: ``conventions.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """A curated unit: its pint expression and every spelling of it.

    ``names`` are (singular, plural) word pairs, the first the primary one, matched case-insensitively; ``symbols``
    are case-sensitive; both are written into questions. ``accepted`` spellings resolve but are never generated
    (``mm**3``); ``informal`` ones are generated but do not resolve, since out of context they mean something else
    (``C`` is coulomb to pint); ``heldout`` ones are never written into training questions (``val_unseen`` uses them).
    ``tier``: how often people ask about the unit (1 everyday, 2 common, 3 rare); pairs are sampled in proportion.
    """

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
    _u("nanometer", "length", "nanometer", [("nanometer", "nanometers"), ("nanometre", "nanometres")], ("nm",), tier=3),
    _u("millimeter", "length", "millimeter", [("millimeter", "millimeters"), ("millimetre", "millimetres")], ("mm",)),
    _u("centimeter", "length", "centimeter", [("centimeter", "centimeters"), ("centimetre", "centimetres")], ("cm",)),
    _u("meter", "length", "meter", [("meter", "meters"), ("metre", "metres")], ("m",)),
    _u("kilometer", "length", "kilometer", [("kilometer", "kilometers"), ("kilometre", "kilometres")], ("km",),
       accepted=("kms",), heldout=("kilometre", "kilometres")),
    _u("inch", "length", "inch", ("inch", "inches"), ("in",), accepted=("ins",)),
    _u("foot", "length", "foot", ("foot", "feet"), ("ft",)),
    _u("yard", "length", "yard", ("yard", "yards"), ("yd", "yds"), heldout=("yds",)),
    _u("mile", "length", "mile", [("mile", "miles"), ("statute mile", "statute miles")], ("mi",)),
    _u("nautical_mile", "length", "nautical_mile", ("nautical mile", "nautical miles"), ("nmi",), tier=2),
    # mass
    _u("microgram", "mass", "microgram", [("microgram", "micrograms"), ("microgramme", "microgrammes")], ("µg", "mcg"),
       tier=3, accepted=("μg", "ug")),
    _u("milligram", "mass", "milligram", [("milligram", "milligrams"), ("milligramme", "milligrammes")], ("mg",)),
    _u("gram", "mass", "gram", [("gram", "grams"), ("gramme", "grammes")], ("g",), accepted=("gr",)),
    _u("kilogram", "mass", "kilogram", [("kilogram", "kilograms"), ("kilo", "kilos"), ("kilogramme", "kilogrammes")],
       ("kg", "kgs"), heldout=("kgs", "kilogramme", "kilogrammes")),
    # a bare `ton` is the metric tonne by default (conventions.py: every questioner who wrote it meant 1000 kg),
    # so the tonne is an everyday unit (tier 1): 3% of 1000 questions people wrote asked about tons
    _u("tonne", "mass", "metric_ton", [("metric ton", "metric tons"), ("tonne", "tonnes"), ("ton", "tons")], ("t",)),
    _u("short_ton", "mass", "short_ton", [("short ton", "short tons"), ("US ton", "US tons")], (), tier=2),
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
    _u("imperial_pint", "volume", "imperial_pint", [("imperial pint", "imperial pints"), ("UK pint", "UK pints")], (), tier=3),
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
    _u("megapascal", "pressure", "megapascal", ("megapascal", "megapascals"), ("MPa",), tier=2),
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
