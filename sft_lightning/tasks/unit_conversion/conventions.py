"""What a word means where usage varies (``ton``, ``KB``, ``gallon``, ``calorie``: ``Conventions``), and what it means beside
another unit (``G`` beside ``MB``, ``oz`` beside a quart: ``BESIDE``). The defaults and their evidence: docs/data.md, "Conventions".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sft_lightning.tasks.unit_conversion.table import UNITS, Unit


@dataclass(frozen=True)
class Reading:
    """Spellings whose unit a convention chooses: ``keys`` maps each choice to the unit they then mean."""

    names: tuple[tuple[str, str], ...]
    symbols: tuple[str, ...]
    keys: Mapping[str, str]


def _reading(names: tuple[tuple[str, str], ...], symbols: tuple[str, ...], **keys: str) -> Reading:
    return Reading(names, symbols, keys)


# convention -> its choices (the first is the default) and the spellings each choice reads
CHOICES: dict[str, tuple[str, ...]] = {
    "ton": ("metric", "short"),
    "kilobyte": ("decimal", "binary"),
    "gallon": ("us", "imperial"),
    "calorie": ("small", "food"),
}
READINGS: dict[str, tuple[Reading, ...]] = {
    "ton": (_reading((("ton", "tons"),), (), metric="tonne", short="short_ton"),),
    "kilobyte": tuple(
        _reading(((f"{si}byte", f"{si}bytes"),), (f"{p}B",), decimal=f"{si}byte", binary=f"{iec}byte")
        for si, iec, p in (("kilo", "kibi", "K"), ("mega", "mebi", "M"), ("giga", "gibi", "G"), ("tera", "tebi", "T"))
    ),
    "gallon": (_reading((("gallon", "gallons"),), ("gal",), us="gallon", imperial="imperial_gallon"),),
    "calorie": (_reading((("calorie", "calories"),), ("cal",), small="calorie", food="kilocalorie"),),
}

# the other unit's context (its family; ``BINARY_DATA`` for KiB...TiB) -> what a word means beside it: words
# (case-folded tuples) or exact symbols -> the explicit spelling it stands for, read under the conventions in force
# (G -> GB -> GiB under binary). A prefix alone takes the byte of its neighbour: 2 G in MB is 2 GB, 8 G in MiB 8 GiB.
BINARY_DATA = "data:binary"
_PREFIXES_ALONE = {"K": "K", "k": "K", "M": "M", "G": "G", "T": "T", "kb": "K", "mb": "M", "gb": "G", "tb": "T",
                   ("gig", "gigs"): "G", ("meg", "megs"): "M"}
BESIDE: dict[str, dict[tuple[str, ...] | str, str]] = {
    "data": {spelling: f"{prefix}B" for spelling, prefix in _PREFIXES_ALONE.items()} | {"k": "kB"},
    BINARY_DATA: {spelling: f"{prefix}iB" for spelling, prefix in _PREFIXES_ALONE.items()},
    "volume": {"oz": "fl oz", ("ounce", "ounces"): "fluid ounce"},
    "pressure": {"mb": "mbar"},
}


def context_of(unit: Unit) -> str:
    """The context ``unit`` gives the question's other unit (a key of ``BESIDE``): its family, or ``BINARY_DATA``
    beside KiB, MiB, GiB, TiB."""
    return BINARY_DATA if unit.key.endswith("bibyte") else unit.family


@dataclass(frozen=True)
class Conventions:
    """The reading of each word whose meaning varies; each default is what most people who write it mean.

    Args:
        ton: ``metric`` (1000 kg) or ``short`` (US, 2000 lb); ``long ton``/``short ton``/``tonne`` are never ambiguous.
        kilobyte: ``decimal`` (KB, MB, GB, TB = powers of 1000 bytes) or ``binary`` (powers of 1024, as Windows);
            ``kB`` stays 1000 and ``KiB``/``MiB``/``GiB``/``TiB`` 1024 either way.
        gallon: ``us`` (3.785 L) or ``imperial`` (4.546 L); quart, pint, cup and fl oz stay US either way.
        calorie: ``small`` (4.184 J) or ``food`` (a food Calorie, 1 kcal).
    """

    ton: Literal["metric", "short"] = "metric"
    kilobyte: Literal["decimal", "binary"] = "decimal"
    gallon: Literal["us", "imperial"] = "us"
    calorie: Literal["small", "food"] = "small"

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"conventions.{name} is {getattr(self, name)!r}; expected one of: {', '.join(choices)}")

    @classmethod
    def of(cls, given: Conventions | Mapping[str, str] | None) -> Conventions:
        """A config's value (a mapping when read back from a run's config.yaml) as Conventions."""
        if given is None or isinstance(given, Conventions):
            return given or DEFAULT
        unknown = set(given) - set(CHOICES)
        if unknown:
            raise ValueError(f"unknown conventions {sorted(unknown)}; expected some of: {', '.join(CHOICES)}")
        return cls(**given)


DEFAULT = Conventions()


@functools.cache
def assignments(conventions: Conventions) -> tuple[dict[str, str], dict[str, str]]:
    """Each governed spelling's unit key under ``conventions``: (symbols, exact; words, case-folded)."""
    symbols: dict[str, str] = {}
    words: dict[str, str] = {}
    for name, readings in READINGS.items():
        for reading in readings:
            key = reading.keys[getattr(conventions, name)]
            symbols.update(dict.fromkeys(reading.symbols, key))
            words.update(dict.fromkeys((w.casefold() for pair in reading.names for w in pair), key))
    return symbols, words


def governed_key(spelling: str, conventions: Conventions) -> str | None:
    """The unit a convention gives ``spelling`` (a cleaned spelling), None when no convention governs it."""
    symbols, words = assignments(conventions)
    return symbols.get(spelling) or words.get(spelling.casefold())


def _mine(spelling: str, key: str, conventions: Conventions) -> bool:
    """Whether ``spelling`` reads as unit ``key`` under ``conventions`` (always, where no convention governs it)."""
    governed = governed_key(spelling, conventions)
    return governed is None or governed == key


@functools.cache
def view(unit: Unit, conventions: Conventions = DEFAULT) -> Unit | None:
    """``unit`` with the spellings that mean it under ``conventions`` (None when none is left), so its
    ``symbol`` names the unit the answer uses: the short ton is ``short ton`` when ``ton`` is metric."""
    names = [pair for pair in unit.names if _mine(pair[0], unit.key, conventions)]
    symbols = [s for s in unit.symbols if _mine(s, unit.key, conventions)]
    for name, readings in READINGS.items():
        for reading in readings:
            if reading.keys[getattr(conventions, name)] == unit.key:
                names += [pair for pair in reading.names if pair not in names]
                symbols += [s for s in reading.symbols if s not in symbols]
    if not names and not symbols:
        return None
    if not names:  # a symbol stands in as the name ("kB" under binary, where kilobyte means KiB)
        names = [(symbols[0], symbols[0])]
    kept = {w for pair in names for w in pair} | set(symbols)
    return dataclasses.replace(unit, names=tuple(names), symbols=tuple(symbols), heldout=unit.heldout & kept)


def table_views(conventions: Conventions = DEFAULT) -> tuple[Unit, ...]:
    """The table's units as ``conventions`` read them, leaving out those no spelling means any more."""
    return tuple(v for v in (view(u, conventions) for u in UNITS) if v is not None)
