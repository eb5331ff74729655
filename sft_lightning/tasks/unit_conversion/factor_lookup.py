"""The factor lookup: the model reads the question, the unit table supplies the factor.

A worked answer reads ``ft to m: 6×0.305=<answer>1.83</answer>``. By the time the model has written
``ft to m: 6×`` it has done the part that needs language: which units the question means, in
whatever spelling it used, and which quantity. What is left is a fact per unit pair (the factor)
and a multiplication. A 135M model trained for minutes on a CPU gets most of its wrong answers
from the factor ("1 st = 0.000001 mg"), so generation hands the factor to the unit table, as it
hands the multiplication to the calculator: the factor (``worked.factor_text``, the one training
writes), the product and the end of the answer are written for the model.

Only a set-up that names two units of one multiplicative family that ``units.resolve_pair``
reads (under the task's conventions, each unit beside the other, composed rates included) is completed. Anything else (a unit the table lacks, a temperature, another format) is left
to the model, which writes its own factor as it was trained to, and ``model.calculator false``
turns this off with the calculator.
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
