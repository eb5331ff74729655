"""Reading a unit: any spelling of the table, beside the other unit, under the task's conventions, to a canonical key.

One resolver (sizes from pint) serves the generator, the worked set-ups and the factor lookup, so they never disagree.
"""

from __future__ import annotations

import difflib
import functools
import numbers
import re
from decimal import Decimal
from typing import Any

from sft_lightning.tasks.unit_conversion.conventions import BESIDE, DEFAULT, Conventions, context_of, governed_key
from sft_lightning.tasks.unit_conversion.rates import rate, rate_of_key
from sft_lightning.tasks.unit_conversion.table import FAMILIES, UNITS, Unit, UnknownFamilyError, UnknownUnitError

__all__ = [
    "BY_KEY", "DEFAULT", "FAMILIES", "UNITS", "Conventions", "Unit", "UnknownFamilyError", "UnknownUnitError",
    "accepted_spellings", "check_family", "convert", "convert_keys", "family_of", "pair_factor", "registry",
    "resolve_pair", "resolve_unit", "unit", "units_of",
]

# Spellings that look like units but are deliberately rejected, with the reason.
# (Note: "K" is accepted, as kelvin, and as KB beside a data size; "B" is accepted, as byte.)
_REJECTED: dict[str, str] = {
    "G": "'G' alone is gauss in pint and ambiguous for giga- (beside a data size it is GB); write GB or Gb (gigabit)",
    "M": "'M' alone is molar in pint and ambiguous for mega- (beside a data size it is MB); write MB or Mb (megabit)",
    "T": "'T' alone is tesla in pint and ambiguous for tera- (beside a data size it is TB); write TB",
    "k": "'k' alone is only a prefix (beside a data size it is kB); write e.g. km, kg or kB",
    "b": "'b' is ambiguous (bit or barn); write 'bit'",
    "kb": "'kb' is ambiguous (kilobit or kilobyte; beside a data size it is KB); write kB/KB (kilobyte) or kbit",
    "mb": "'mb' is ambiguous (millibar or megabyte; beside a data size it is MB, beside a pressure mbar); write mbar or MB",
    "gb": "'gb' alone is read beside a data size (GB); write GB or Gb (gigabit)",
    "tb": "'tb' alone is read beside a data size (TB); write TB",
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
    """The unit of a canonical key: the table's, or a composed rate (``inch_per_second``)."""
    found = BY_KEY.get(key) or rate_of_key(key)
    if found is None:
        raise KeyError(f"no unit has the key {key!r}")
    return found


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


def family_of(name: str, conventions: Conventions = DEFAULT) -> str:
    """Family of a unit given in any surface form."""
    return unit(resolve_unit(name, conventions=conventions)).family


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


def resolve_unit(name: str, family: str | None = None, *, beside: str | None = None, conventions: Conventions = DEFAULT) -> str:
    """Map any accepted surface form to its canonical unit key.

    Symbols are case-sensitive (MB is not Mb); word forms are not. ``beside`` (the question's other unit)
    or else ``family`` is the context that reads a prefix alone or an ounce (``conventions.BESIDE``); with
    ``family``, a unit of another family is rejected.
    """
    if not isinstance(name, str):
        raise UnknownUnitError(f"unit must be a string, got {type(name).__name__}: {name!r}")
    if family is not None:
        check_family(family)
    cleaned = _clean(name)
    context = _context_beside(beside, conventions) if beside is not None else family
    found = _in_context(cleaned, context, conventions) or _plain(cleaned, conventions)
    if found is None:
        raise UnknownUnitError(_unknown_unit_message(cleaned or name, family))
    if family is not None and found.family != family:
        raise UnknownUnitError(
            f"unit {name!r} is {found.family} ({found.key}), not a {family} unit; "
            f"accepted {family} spellings: {', '.join(accepted_spellings(family))}"
        )
    return found.key


def resolve_pair(source: str, target: str, conventions: Conventions = DEFAULT) -> tuple[str, str]:
    """The keys of a question's two units, each read beside the other (``G``, ``MB`` -> gigabyte, megabyte); two
    spellings that each need a neighbour are read in the first family where both mean a unit (``mb``, ``gb``)."""
    try:
        return (resolve_unit(source, beside=target, conventions=conventions),
                resolve_unit(target, beside=source, conventions=conventions))
    except UnknownUnitError:
        family = _shared_family(_clean(source), _clean(target), conventions)
        if family is None:
            raise
        return (resolve_unit(source, family, conventions=conventions), resolve_unit(target, family, conventions=conventions))


def _shared_family(source: str, target: str, conventions: Conventions) -> str | None:
    """The first family in which both spellings read as a unit only beside it (``mb`` and ``gb``: data)."""
    for family in BESIDE:
        if family in FAMILIES and all(_in_context(name, family, conventions) for name in (source, target)):
            return family
    return None


_RATE = re.compile(r"(?P<length>.+?)\s*(?:/|\s(?i:per)\s)\s*(?P<time>.+)")


def _plain(cleaned: str, conventions: Conventions) -> Unit | None:
    """The unit a spelling names on its own: a convention's reading, the table's, or a composed rate."""
    key = governed_key(cleaned, conventions)
    if key is not None:
        return BY_KEY[key]
    found = _SYMBOLS.get(cleaned) or _WORDS.get(cleaned.casefold())
    if found is not None:
        return found
    parts = _RATE.fullmatch(cleaned) or _RATE.fullmatch(cleaned.replace("_", " "))
    if parts is None:
        return None
    length, time = _plain(parts["length"], conventions), _plain(parts["time"], conventions)
    if length is None or time is None or (length.family, time.family) != ("length", "time"):
        return None
    return rate(length, time)


def _context_beside(beside: str, conventions: Conventions) -> str | None:
    """The context the question's other unit gives (``conventions.context_of``), read on its own; None when it is
    not a unit."""
    found = _plain(_clean(beside), conventions) if isinstance(beside, str) else None
    return None if found is None else context_of(found)


def _in_context(cleaned: str, context: str | None, conventions: Conventions) -> Unit | None:
    """What ``cleaned`` means beside a unit giving ``context`` (``conventions.BESIDE``), None when no rule reads it."""
    for spelling, meant in BESIDE.get(context or "", {}).items():
        if cleaned == spelling or (isinstance(spelling, tuple) and cleaned.casefold() in spelling):
            return _plain(meant, conventions)
    return None


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
    return registry().parse_expression(unit(key).pint_expr)


def _to_decimal(value: float) -> Decimal:
    """Interpret a float by its shortest repr, so 0.1 means exactly one tenth."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise TypeError(f"value must be a real number, got {type(value).__name__}: {value!r}")
    result = Decimal(value) if isinstance(value, (int, Decimal)) else Decimal(repr(float(value)))
    if not result.is_finite():
        raise ValueError(f"value must be finite, got {value!r}")
    return result


def convert(value: float, source: str, target: str, conventions: Conventions = DEFAULT) -> float:
    """Convert ``value`` from ``source`` to ``target`` (any surface forms, each read beside the other) using pint."""
    src, dst = resolve_pair(source, target, conventions)
    if unit(src).family != unit(dst).family:
        raise ValueError(
            f"cannot convert {source!r} ({unit(src).family}) to {target!r} ({unit(dst).family}): incompatible dimensions"
        )
    return convert_keys(value, src, dst)


def convert_keys(value: float, src_key: str, dst_key: str) -> float:
    """Convert ``value`` between two canonical keys of one family (no spelling is read: the generator's path)."""
    src, dst = unit(src_key), unit(dst_key)
    if src.family != dst.family:
        raise ValueError(f"cannot convert {src.key} ({src.family}) to {dst.key} ({dst.family}): incompatible dimensions")
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
    return convert_keys(1, src_key, dst_key)


@functools.cache
def beside_forms(key: str, context: str, conventions: Conventions = DEFAULT) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The spellings that mean unit ``key`` only beside a unit giving ``context`` (``G`` for GB beside MB, for GiB
    beside MiB; ``oz`` for fl oz beside a volume): (word pairs, symbols); the generator writes them there."""
    forms = [spelling for spelling, meant in BESIDE.get(context, {}).items()
             if getattr(_plain(meant, conventions), "key", None) == key]
    return tuple(f for f in forms if isinstance(f, tuple)), tuple(f for f in forms if isinstance(f, str))
