"""The factor lookup: once the model has written ``ft to m: 6×``, the unit table writes the factor and the calculator the product.

Only a set-up naming two units of one multiplicative family that ``units.resolve_pair`` reads is completed (docs/data.md).
"""

from __future__ import annotations

import re

from sft_lightning.tasks.unit_conversion.calculator import TRIGGER, evaluate
from sft_lightning.tasks.unit_conversion.calculator import completion as calculated
from sft_lightning.tasks.unit_conversion.conventions import DEFAULT, Conventions
from sft_lightning.tasks.unit_conversion.units import UnknownUnitError, resolve_pair, unit
from sft_lightning.tasks.unit_conversion.worked import factor_text

_SET_UP = re.compile(r"\s*(?P<source>[^:;=]+?) to (?P<target>[^:;=]+?): (?P<quantity>[^:;=×]+)×")


def units_of_set_up(text: str, conventions: Conventions = DEFAULT) -> tuple[str, str] | None:
    """The canonical (source, target) keys a set-up such as ``ft to m: 6×`` names, each unit read beside the
    other (``G to MB`` is gigabyte to megabyte); None when it does not name two known units of one
    multiplicative family."""
    match = _SET_UP.fullmatch(text)
    if match is None:
        return None
    try:
        source, target = resolve_pair(match["source"].strip(), match["target"].strip(), conventions)
    except UnknownUnitError:
        return None
    family = unit(source).family
    if family != unit(target).family or family == "temperature":
        return None
    if evaluate(match["quantity"]) is None:
        return None
    return source, target


def completion(text: str, conventions: Conventions = DEFAULT) -> str | None:
    """What to write after a set-up ``ft to m: 6×``: the factor and the calculator's product,
    ``"0.305=<answer>1.83</answer>"``; None when the model should go on by itself."""
    units = units_of_set_up(text, conventions)
    if units is None:
        return None
    written = factor_text(*units) + TRIGGER
    rest = calculated(text + written)
    return None if rest is None else written + rest
