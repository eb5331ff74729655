"""The factor lookup: once the model has written ``ft to m: 6×``, the unit table writes the factor and the calculator the product.

Only a set-up naming two units of one family that ``units.resolve_pair`` reads is completed; a temperature's once its
quantity and first operator are written (``°C to °F: -40×``), with the formula of ``worked.py`` (docs/data.md).
"""

from __future__ import annotations

import re

from sft_lightning.data.prompt import ANSWER_OPEN
from sft_lightning.tasks.unit_conversion.calculator import TRIGGER, evaluate
from sft_lightning.tasks.unit_conversion.calculator import completion as calculated
from sft_lightning.tasks.unit_conversion.conventions import DEFAULT, Conventions
from sft_lightning.tasks.unit_conversion.units import UnknownUnitError, resolve_pair, unit
from sft_lightning.tasks.unit_conversion.worked import factor_text, working

_SET_UP = re.compile(r"\s*(?P<source>[^:;=]+?) to (?P<target>[^:;=]+?): (?P<quantity>[^:;=×]+)×")
_TEMPERATURE_SET_UP = re.compile(r"\s*(?P<source>[^:;=]+?) to (?P<target>[^:;=]+?): \(?(?P<quantity>-?\d+(?:\.\d+)?)[×+-]")


def units_of_set_up(text: str, conventions: Conventions = DEFAULT) -> tuple[str, str] | None:
    """The canonical (source, target) keys a set-up such as ``ft to m: 6×`` names, each unit read beside the
    other (``G to MB`` is gigabyte to megabyte); None when it does not name two known units of one
    multiplicative family."""
    match = _SET_UP.fullmatch(text)
    named = _named_units(match, conventions)
    if named is None or named[2] == "temperature" or evaluate(match["quantity"]) is None:
        return None
    return named[0], named[1]


def _named_units(match: re.Match[str] | None, conventions: Conventions) -> tuple[str, str, str] | None:
    """The (source, target, family) of a matched set-up's two units, None unless both are known units of one family."""
    if match is None:
        return None
    try:
        source, target = resolve_pair(match["source"].strip(), match["target"].strip(), conventions)
    except UnknownUnitError:
        return None
    family = unit(source).family
    return (source, target, family) if family == unit(target).family else None


def completion(text: str, conventions: Conventions = DEFAULT) -> str | None:
    """What to write after a set-up ``ft to m: 6×``: the factor and the calculator's product,
    ``"0.305=<answer>1.83</answer>"`` (after ``°C to °F: -40×``: ``"1.8+32=-72+32=<answer>-40</answer>"``);
    None when the model should go on by itself."""
    units = units_of_set_up(text, conventions)
    written = factor_text(*units) + TRIGGER if units else _temperature_rest(text, conventions)
    if written is None:
        return None
    rest = calculated(text + written)
    return None if rest is None else written + rest


def _temperature_rest(text: str, conventions: Conventions) -> str | None:
    """The rest of a temperature's working up to ``=<answer>``, when the model's start is the formula's own start
    (``°F to °C: (-10-`` of ``(-10-32)/1.8=``); None otherwise."""
    match = _TEMPERATURE_SET_UP.fullmatch(text)
    named = _named_units(match, conventions)
    if named is None or named[2] != "temperature" or named[0] == named[1]:
        return None
    whole, _ = working(float(match["quantity"]), named[0], named[1], conventions)
    steps, started = whole.split(": ", 1)[1], text.split(": ", 1)[1]
    return steps[len(started):] + ANSWER_OPEN if steps.startswith(started) else None
