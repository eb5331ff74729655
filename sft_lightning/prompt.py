"""The one prompt/answer format, shared by training and generation so the two never drift.

The prompt is the bare question between two newlines. SmolLM2's ChatML turn wrapper would add ~9
tokens to every example, a large share of a short example's tokens, on a CPU budget that is
better spent on more examples; the fine-tuned model learns this format instead. The answer always ends with the tokenizer's EOS (appended as an id by the data module), so
generation stops by itself.
"""

from __future__ import annotations

import math
from decimal import Decimal

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


def format_prompt(question: str) -> str:
    """Everything the model is given; generation continues right after it.

    The leading newline keeps the question off position 0, which a causal LM uses as an attention
    sink and reads poorly: with the question first, a model fine-tuned on worked answers wrote
    "3 years = ? decades" as "22×0.1" and "3 ounces = ? kg" as "22×0.0283", while quantities
    that were not the first token were copied right.
    """
    return f"\n{question.strip()}\n"


def format_answer(value: float, significant_digits: int = 4, working: str = "") -> str:
    """The supervised target (EOS is appended as a token id by the data module).

    ``working`` is written before the tag (a worked answer, ``sft_lightning.tasks.unit_conversion.worked``); the number
    the metrics parse is always the one inside ``<answer>``.
    """
    return f"{working}{ANSWER_OPEN}{format_number(value, significant_digits)}{ANSWER_CLOSE}"


def format_number(value: float, significant_digits: int = 4) -> str:
    """Round to significant digits, not decimal places, so 0.000123 never becomes 0.

    Plain decimal notation (what people write and what the model has read most) unless the
    magnitude is extreme, where scientific notation keeps the string short.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot format non-finite answer {value!r}")
    if significant_digits < 1:
        raise ValueError(f"significant_digits must be >= 1, got {significant_digits}")
    if value == 0:
        return "0"
    rounded = float(f"{value:.{significant_digits}g}")
    if 1e-6 <= abs(rounded) < 1e15:
        text = format(Decimal(repr(rounded)), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    return f"{rounded:.{significant_digits - 1}e}"
