"""Exact arithmetic for worked answers: the model sets the calculation up (``6×0.305=<answer>``), a calculator does it.

Only the working's last set-up is evaluated (a parsed expression tree, no ``eval``); anything else stays as written (docs/data.md).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from sft_lightning.data.prompt import ANSWER_CLOSE, ANSWER_OPEN, format_number

TRIGGER = "=" + ANSWER_OPEN
DIGITS = 4  # one more than the training targets: the calculator's value is exact
_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


_MILLION = re.compile(r"(?<=\d) ?million\b")


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression of numbers (``1,500``, ``2 million``), + - × * / and parentheses;
    None otherwise."""
    text = _MILLION.sub("*1000000", expression.replace("×", "*").replace("·", "*").replace(",", "")).strip()
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
