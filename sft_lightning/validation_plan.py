"""How long a validation will take, and how many questions fit a bounded share of a time budget.

Validation runs, per batch of ``eval_batch_size`` questions (sorted by prompt length): on the main
set a loss forward in chunks of ``LOSS_CHUNK_ROWS`` rows (``loss.chunked_loss_sum``), then greedy
generation, which is a prefill over the padded prompts and one decoding step per generated token,
for fewer and fewer rows as rows finish. So a batch's seconds are modelled as (``ValidationCost``)

    per_token * (padded tokens of the loss chunks) + per_prompt_token * (padded prompt tokens)
    + per_step * decoding steps + per_row_step * (sum of the rows' decoding steps)

with the rows' lengths those of training answers (a trained model writes answers like them, up to
where the task's completion hook writes the rest at once). ``per_token`` comes from one timed loss
chunk; the prefill and decoding constants from two timed generation batches, where every decoding
step is timed with the rows it ran (rows leave as they finish, so one batch alone spans many row
counts): a step costs a fixed part (reading the weights) and a part per row, and the fit separates
the two from the steps rather than from two batch totals. The whole model is then applied to the
real batches, so a set of 200-row batches is predicted from batches of 16 and 48 without timing a
200-row batch, which would cost as much as a good part of the validation itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sft_lightning.loss import LOSS_CHUNK_ROWS

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
    """Seconds per padded token of the loss forward and of the prefill, per decoding step, and per row in a
    decoding step."""

    per_token: float
    per_prompt_token: float
    per_step: float
    per_row_step: float

    @classmethod
    def fit(
        cls, per_token: float, prefills: Sequence[tuple[int, float]], steps: Sequence[tuple[int, float]]
    ) -> ValidationCost:
        """The constants from timings: ``prefills`` as (padded prompt tokens, seconds), ``steps`` as (rows,
        seconds) of single decoding steps. Least squares, every constant kept >= 0."""
        tokens = sum(n * n for n, _ in prefills)
        per_prompt_token = max(0.0, sum(n * t for n, t in prefills) / tokens) if tokens else per_token
        per_step, per_row_step = _line(steps)
        return cls(per_token=per_token, per_prompt_token=per_prompt_token, per_step=per_step, per_row_step=per_row_step)

    def batch_seconds(self, shapes: Sequence[Shape], lengths: Sequence[int], with_loss: bool) -> float:
        if not shapes:
            return 0.0
        seconds = self.per_prompt_token * prefill_tokens(shapes) + self.per_step * max(lengths) + self.per_row_step * sum(lengths)
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


def _line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(intercept, slope) of seconds over rows by least squares, both >= 0 (a negative one is dropped and the
    other refitted alone)."""
    if not points:
        return 0.0, 0.0
    n = len(points)
    sx = sum(x for x, _ in points)
    sy = sum(y for _, y in points)
    sxx = sum(x * x for x, _ in points)
    sxy = sum(x * y for x, y in points)
    det = n * sxx - sx * sx
    if det > 1e-12:
        slope = (n * sxy - sx * sy) / det
        intercept = (sy - slope * sx) / n
        if slope >= 0 and intercept >= 0:
            return intercept, slope
        if slope < 0:
            return max(0.0, sy / n), 0.0
    return 0.0, max(0.0, sxy / sxx) if sxx else 0.0


def prefill_tokens(shapes: Sequence[Shape]) -> int:
    """Padded tokens of a left-padded prompt batch."""
    return len(shapes) * max(shape.prompt for shape in shapes)


def loss_tokens(shapes: Sequence[Shape], rows: int = LOSS_CHUNK_ROWS) -> int:
    """Padded tokens of the loss forward over a batch in order, ``rows`` rows at a time, each chunk padded to its
    own longest row (``loss.chunked_loss_sum``)."""
    return sum(len(chunk) * max(shape.full for shape in chunk) for chunk in (shapes[i : i + rows] for i in range(0, len(shapes), rows)))


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
