"""How long a validation will take, and how many questions fit a bounded share of a time budget.

Validation runs, per batch of ``eval_batch_size`` questions (sorted by prompt length): on the main
set a loss forward over the whole padded batch, then greedy generation, which is a prefill over
the padded prompts and one decoding step per generated token, for fewer and fewer rows as rows
finish. So a batch's seconds are modelled as (``ValidationCost``)

    per_token * (padded tokens of the loss forward and of the prefill)
    + per_step * decoding steps + per_row_step * (sum of the rows' decoding steps)

with the rows' lengths those of training answers (a trained model writes answers like them, up to
where the calculator writes the rest at once). ``per_token`` comes from one timed forward, the two
decoding constants from two timed generation batches of different sizes; the whole model is then
applied to the real batches, so a set of 200-row batches is predicted from batches of 16 and 48
without timing a 200-row batch, which would cost as much as a good part of the validation itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Generated validation sets are never cut below this many questions: fewer, and an accuracy's
# 95% interval would be wider than +-0.1.
MIN_GENERATED_QUESTIONS = 100


@dataclass(frozen=True)
class Shape:
    """What decides a validation question's cost: its prompt and prompt+answer lengths in tokens."""

    prompt: int
    full: int


@dataclass(frozen=True)
class ValidationCost:
    """Seconds per padded forward token, per decoding step, and per row in a decoding step."""

    per_token: float
    per_step: float
    per_row_step: float

    @classmethod
    def fit(
        cls, per_token: float, batches: Sequence[tuple[Sequence[Shape], Sequence[int], float]]
    ) -> ValidationCost:
        """The decoding constants from timed generation batches ``(shapes, decoding lengths, seconds)``: least
        squares over ``seconds - prefill`` (two batches: exact), both constants kept >= 0."""
        rows = [(max(lengths), sum(lengths), seconds - per_token * prefill_tokens(shapes)) for shapes, lengths, seconds in batches]
        sxx = sum(s * s for s, _, _ in rows)
        syy = sum(r * r for _, r, _ in rows)
        sxy = sum(s * r for s, r, _ in rows)
        sxt = sum(s * t for s, _, t in rows)
        syt = sum(r * t for _, r, t in rows)
        det = sxx * syy - sxy * sxy
        step, row = ((syy * sxt - sxy * syt) / det, (sxx * syt - sxy * sxt) / det) if abs(det) > 1e-12 else (-1.0, -1.0)
        if step < 0 or row < 0:  # one constant explains the times: fit the per-row one alone
            step, row = 0.0, max(0.0, syt / syy) if syy else 0.0
        return cls(per_token=per_token, per_step=step, per_row_step=row)

    def batch_seconds(self, shapes: Sequence[Shape], lengths: Sequence[int], with_loss: bool) -> float:
        if not shapes:
            return 0.0
        seconds = self.per_token * prefill_tokens(shapes) + self.per_step * max(lengths) + self.per_row_step * sum(lengths)
        return seconds + (self.per_token * loss_tokens(shapes) if with_loss else 0.0)

    def set_seconds(self, shapes: Sequence[Shape], lengths: Sequence[int], batch_size: int, with_loss: bool) -> float:
        """A set as validation batches it: sorted by prompt length, ``batch_size`` at a time; the rows' decoding
        lengths are ``lengths`` in turn."""
        ordered = sorted(shapes, key=lambda shape: shape.prompt)
        total = 0.0
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            total += self.batch_seconds(batch, cycled(lengths, start, len(batch)), with_loss)
        return total


def prefill_tokens(shapes: Sequence[Shape]) -> int:
    """Padded tokens of a left-padded prompt batch."""
    return len(shapes) * max(shape.prompt for shape in shapes)


def loss_tokens(shapes: Sequence[Shape]) -> int:
    """Padded tokens of a right-padded prompt+answer batch."""
    return len(shapes) * max(shape.full for shape in shapes)


def cycled(lengths: Sequence[int], start: int, count: int) -> list[int]:
    """``count`` decoding lengths taken from ``lengths`` in turn, from position ``start``."""
    return [lengths[(start + i) % len(lengths)] for i in range(count)] if lengths else [1] * count


@dataclass(frozen=True)
class ValidationPlan:
    """Questions per validation set and the seconds they are expected to take."""

    sizes: dict[str, int]
    seconds: float
    cut: bool  # some generated set was cut to fit the limit


def plan_validation(
    sets: Mapping[str, Sequence[Shape]],
    shrinkable: Sequence[str],
    cost: ValidationCost,
    lengths: Sequence[int],
    batch_size: int,
    loss_set: str | None,
    max_seconds: float | None,
    minimum: int = MIN_GENERATED_QUESTIONS,
) -> ValidationPlan:
    """The largest equal cut of the ``shrinkable`` (generated) sets, never below ``minimum`` questions each,
    that keeps the whole validation within ``max_seconds``; the other sets (hand-written, the user's files)
    stay whole. A cut keeps the first questions of a set (generated sets are in random order)."""

    def sizes_for(cap: int) -> dict[str, int]:
        return {name: min(len(shapes), cap) if name in shrinkable else len(shapes) for name, shapes in sets.items()}

    def seconds(sizes: Mapping[str, int]) -> float:
        return sum(cost.set_seconds(sets[name][:n], lengths, batch_size, name == loss_set) for name, n in sizes.items())

    full = {name: len(shapes) for name, shapes in sets.items()}
    if max_seconds is None or not shrinkable or seconds(full) <= max_seconds:
        return ValidationPlan(full, seconds(full), cut=False)
    low, high = minimum, max(full[name] for name in shrinkable)
    if seconds(sizes_for(low)) <= max_seconds:
        while low < high:  # the largest cap that fits
            middle = (low + high + 1) // 2
            if seconds(sizes_for(middle)) <= max_seconds:
                low = middle
            else:
                high = middle - 1
    plan = sizes_for(low)  # or, when even the minimum does not fit, the minimum
    return ValidationPlan(plan, seconds(plan), cut=plan != full)


def wilson_interval(successes: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal approximation)."""
    if total <= 0:
        return (0.0, 1.0)
    phat = successes / total
    denominator = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
