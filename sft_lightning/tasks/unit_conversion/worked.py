"""Worked answers: the conversion written out before the answer (``ft to m: 6×0.305=``; temperatures in two steps).

The factor has 3 significant digits and the answer is the product shown, so the arithmetic learnt is exact (why worked: docs/data.md).
"""

from __future__ import annotations

from collections.abc import Callable

from sft_lightning.data.prompt import format_number
from sft_lightning.tasks.unit_conversion.conventions import DEFAULT, Conventions, view
from sft_lightning.tasks.unit_conversion.units import pair_factor, unit

FACTOR_DIGITS = 3

# (source, target) -> the whole expression, the first sub-result, the expression after it, the rest.
_TEMPERATURE: dict[tuple[str, str], tuple[str, Callable[[float], float], str, Callable[[float], float]]] = {
    ("celsius", "fahrenheit"): ("{q}×1.8+32", lambda x: x * 1.8, "{a}+32", lambda a: a + 32),
    ("fahrenheit", "celsius"): ("({q}-32)/1.8", lambda x: x - 32, "{a}/1.8", lambda a: a / 1.8),
    ("fahrenheit", "kelvin"): ("({q}-32)/1.8+273.15", lambda x: x - 32, "{a}/1.8+273.15", lambda a: a / 1.8 + 273.15),
    ("kelvin", "fahrenheit"): ("({q}-273.15)×1.8+32", lambda x: x - 273.15, "{a}×1.8+32", lambda a: a * 1.8 + 32),
    ("celsius", "kelvin"): ("{q}+273.15", lambda x: x + 273.15, "", lambda a: a),
    ("kelvin", "celsius"): ("{q}-273.15", lambda x: x - 273.15, "", lambda a: a),
}


def working(
    quantity: float, source: str, target: str, conventions: Conventions = DEFAULT, said: str | None = None
) -> tuple[str, float]:
    """The text written before ``<answer>`` and the value that text computes.

    ``source``/``target`` are canonical unit keys of one family; the set-up names each by the symbol that
    means it under ``conventions`` (a tonne is ``t``, never ``ton``), so ``units.resolve_pair`` reads it back.
    ``said``: the quantity as the question wrote it, copied into a multiplicative set-up (``2,000,000×``).
    """
    q = said or _plain(quantity)
    units = f"{set_up_symbol(source, conventions)} to {set_up_symbol(target, conventions)}"
    if unit(source).family == "temperature":
        q = _plain(quantity)
        whole, first, rest, finish = _TEMPERATURE[(source, target)]
        inner = round(first(quantity), 6)
        steps = whole.format(q=q) + "=" + (rest.format(a=_plain(inner)) + "=" if rest else "")
        return f"{units}: {steps}", finish(inner)
    factor = factor_text(source, target)
    return f"{units}: {q}×{factor}=", quantity * float(factor)


def set_up_symbol(key: str, conventions: Conventions = DEFAULT) -> str:
    """How a set-up names unit ``key``: its symbol among the spellings that mean it under ``conventions``."""
    seen = view(unit(key), conventions)
    if seen is None:
        raise ValueError(f"no spelling means {key!r} under {conventions}")
    return seen.symbol


def factor_text(source: str, target: str) -> str:
    """How a working writes the factor from ``source`` to ``target`` (canonical keys of one family):
    3 significant digits, plain decimals."""
    return _plain(float(format_number(pair_factor(source, target), FACTOR_DIGITS)))


def _plain(value: float) -> str:
    """A number as the working writes it: no separators, no exponent, no trailing zeros."""
    return format_number(value, 12)
