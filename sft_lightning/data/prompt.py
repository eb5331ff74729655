"""The one prompt/answer format, shared by training and generation so the two never drift.

``prompt_segments`` (generation) and ``example_segments`` (training, the same plus the answer and EOS) are the one function pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

from sft_lightning.data.records import DataError, Turn

PromptFormat = Literal["chat", "bare"]
Segment = tuple[str, bool]  # (text, trained on)

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


def resolve_prompt_format(requested: str, tokenizer: Any, model: str) -> PromptFormat:
    """``auto``: the chat template where the tokenizer has one, else bare; ``chat`` without a template is an error."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise DataError(
            f"data.prompt_format chat: the tokenizer of '{model}' has no chat template. Fix: --data.prompt_format bare "
            "(or auto), or a model with a template."
        )
    if requested == "bare" or not has_template:
        return "bare"
    return "chat"


def prompt_segments(turns: Sequence[Turn], style: PromptFormat, tokenizer: Any = None) -> list[Segment]:
    """What the model is given before its answer: ``turns`` (ending with the user's) and the assistant's start.
    Earlier assistant turns are trained-on segments (their EOS is appended by ``encode_segments``)."""
    if style == "bare":
        return [(content, True) if role == "assistant" else (format_prompt(content), False) for role, content in turns]
    segments: list[Segment] = []
    done = ""
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        prefix = _render(tokenizer, turns[:index], True)
        full = _render(tokenizer, turns[: index + 1], False)
        body = full[len(prefix) :].rstrip()
        segments += [(prefix[len(done) :], False), (body, True)]
        done = prefix + body
    prefix = _render(tokenizer, turns, True)
    return [*segments, (prefix[len(done) :], False)]


def example_segments(turns: Sequence[Turn], answer: str, style: PromptFormat, tokenizer: Any = None) -> list[Segment]:
    """``prompt_segments`` plus the trained-on answer: what a training example is made of."""
    segments = prompt_segments(turns, style, tokenizer)
    if style == "bare":
        return [*segments, (answer, True)]
    prefix = _render(tokenizer, turns, True)
    full = _render(tokenizer, [*turns, ("assistant", answer)], False)
    return [*segments, (full[len(prefix) :].rstrip(), True)]


def _render(tokenizer: Any, turns: Sequence[Turn], generation_prompt: bool) -> str:
    """The chat template's text for ``turns``; a template that rewrites earlier turns cannot be split into turns."""
    messages = [{"role": role, "content": content} for role, content in turns]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja2's TemplateError, or the template's own raise_exception (e.g. no system role)
        raise DataError(
            f"the model's chat template refused a conversation with roles {[role for role, _ in turns]}: {exc}. "
            "Fix: --data.prompt_format bare, or leave out what it refuses (a system message, two turns of one role)."
        ) from None


def encode_segments(tokenizer: Any, examples: Sequence[Sequence[Segment]]) -> list[tuple[list[int], list[bool]]]:
    """Token ids and a trained-on flag per id for each example, in one batched tokenizer call. A trained-on
    segment ends with EOS (appended where the template's turn end is another token), so generation stops."""
    texts = [text for segments in examples for text, _ in segments]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    eos = tokenizer.eos_token_id
    out, position = [], 0
    for segments in examples:
        tokens: list[int] = []
        trained: list[bool] = []
        for _, supervised in segments:
            piece = list(ids[position])
            position += 1
            if supervised and (not piece or piece[-1] != eos):
                piece.append(eos)
            tokens += piece
            trained += [supervised] * len(piece)
        out.append((tokens, trained))
    return out


def check_template_splits(tokenizer: Any, turns: Sequence[Turn], answer: str) -> None:
    """The chat template must render a conversation as its turns one after the other (so that the prompt of
    generation is the prompt trained on); one that rewrites earlier turns is refused with the fix."""
    text = "".join(segment for segment, _ in example_segments(turns, answer, "chat", tokenizer))
    full = _render(tokenizer, [*turns, ("assistant", answer)], False)
    if not full.startswith(text):
        raise DataError(
            "the model's chat template renders a conversation differently from its turns one by one (it rewrites "
            "earlier turns), so the prompt trained on would not be the prompt generated from. Fix: --data.prompt_format bare."
        )
