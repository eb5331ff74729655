"""Rates composed, not listed: any length of the table over any time of the table is a speed (``in/s``, ``cm/min``).

A rate the table lists is the table's unit (``km/h``); the generator asks ``generated()``, a subset of the everyday ones.
"""

from __future__ import annotations

import functools

from sft_lightning.tasks.unit_conversion.table import UNITS, Unit

_BY_KEY = {u.key: u for u in UNITS}
# table speeds that are not named "<length>_per_<time>"
_LISTED = {("nautical_mile", "hour"): "knot"}
_SEPARATOR = "_per_"
# the rates the generator asks about: everyday lengths over everyday times ("2 ft per day in m per year")
_GENERATED_LENGTHS = ("millimeter", "centimeter", "meter", "kilometer", "inch", "foot", "yard", "mile")
_GENERATED_TIMES = ("second", "minute", "hour", "day", "week", "month", "year")


def rate(length: Unit, time: Unit) -> Unit:
    """The speed ``length`` per ``time``: the table's unit where it lists one, else a composed unit."""
    if length.family != "length" or time.family != "time":
        raise ValueError(f"a rate is a length over a time, not {length.family} over {time.family}")
    key = _LISTED.get((length.key, time.key), f"{length.key}{_SEPARATOR}{time.key}")
    return _BY_KEY.get(key) or _composed(length, time)


@functools.cache
def _composed(length: Unit, time: Unit) -> Unit:
    """A speed unit built from its parts: "inch per second", "inches per second", "in/s"; a name built from a
    held-out spelling of the length ("kilometres per minute") is held out too."""
    per = time.singular
    names = tuple((f"{one} per {per}", f"{many} per {per}") for one, many in length.names)
    held = {name for (one, many), pair in zip(length.names, names) if {one, many} & length.heldout for name in pair}
    return Unit(
        key=f"{length.key}{_SEPARATOR}{time.key}",
        family="speed",
        pint_expr=f"({length.pint_expr}) / ({time.pint_expr})",
        names=names,
        symbols=(f"{length.symbol}/{time.symbol}",),
        tier=3,
        heldout=frozenset(held),
    )


def rate_of_key(key: str) -> Unit | None:
    """The rate a key such as ``inch_per_second`` names, None when it names none."""
    length, sep, time = key.partition(_SEPARATOR)
    if not sep or length not in _BY_KEY or time not in _BY_KEY:
        return None
    try:
        return rate(_BY_KEY[length], _BY_KEY[time])
    except ValueError:
        return None


@functools.cache
def generated() -> tuple[Unit, ...]:
    """The composed rates the generator asks about (the table's own speeds are asked anyway)."""
    out = (rate(_BY_KEY[length], _BY_KEY[time]) for length in _GENERATED_LENGTHS for time in _GENERATED_TIMES)
    return tuple(u for u in out if u.key not in _BY_KEY)
