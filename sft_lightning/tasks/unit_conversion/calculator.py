"""Exact arithmetic for worked answers: the model sets the calculation up, a calculator does it.

A worked answer ends ``... 6×0.305=<answer>``: everything the model has to *know* (which units,
which factor, which formula) is written by then, and what is left is a multiplication, the one
thing a 135M model gets wrong most often after its factors (a 3-digit product from ~10,000
examples). As in the GSM8K calculator of Cobbe et al. (2021), generation hands that step to
exact arithmetic: when a row's text ends with ``=<answer>``, the first expression of the working's
last clause (``6×0.305``, or for temperatures ``(100-32)/1.8``, the model's own set-up rather than
its partial results) is evaluated and its value, ``</answer>`` and EOS are written for it.

Nothing else is touched: an output that does not set up a calculation (a bare answer, another
task, a malformed working) is left exactly as the model wrote it, and ``model.calculator false``
turns it off, which is how the model alone is measured.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from sft_lightning.prompt import ANSWER_CLOSE, ANSWER_OPEN, format_number

TRIGGER = "=" + ANSWER_OPEN
DIGITS = 4  # one more than the training targets: the calculator's value is exact
_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression of numbers, + - × * / and parentheses; None otherwise."""
    text = expression.replace("×", "*").replace("·", "*").replace(",", "").strip()
    if not text:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        value = _value(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _value(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if left is None or right is None:
            return None
        return _OPERATORS[type(node.op)](left, right)
    return None


def completion(text: str) -> str | None:
    """What to write after ``text`` when it ends with ``=<answer>`` and sets up a calculation:
    ``"1.83</answer>"``; None when the model should go on by itself."""
    if not text.endswith(TRIGGER):
        return None
    working = text[: -len(ANSWER_OPEN)]
    clause = working.replace(":", ";").rsplit(";", 1)[-1]
    first = clause.split("=", 1)[0]
    value = evaluate(first)
    if value is None:
        return None
    return format_number(value, DIGITS) + ANSWER_CLOSE
