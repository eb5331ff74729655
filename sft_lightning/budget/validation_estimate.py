"""How long a validation will take (a cost model timed on this machine), and how many questions fit a bounded
share of a time budget. The model and how it is timed: docs/design.md, "The validation estimate"."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from sft_lightning.data.batching import Example
from sft_lightning.evaluation.generation import greedy_generate
from sft_lightning.evaluation.metrics import MAIN_VAL_SET
from sft_lightning.loss import LOSS_CHUNK_ROWS, chunked_loss_sum
from sft_lightning.models.anatomy import causal_lm_parts

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


SMALL_BATCH = 16
LARGE_BATCH = 48


Forced = Callable[[list[int]], list[int] | None]


@dataclass(frozen=True)
class Ending:
    """How validation ends a row: the EOS token, and the calculator's forced continuation (or None)."""

    eos_token_id: int
    forced: Forced | None


def decoding_steps(outputs: Sequence[Sequence[int]], forced: Forced | None) -> list[int]:
    """Decoding steps each output takes: all its tokens (EOS included), or up to the point where ``forced``
    (the calculator) writes the rest at once."""
    steps = []
    for ids in outputs:
        ids = list(ids)
        length = len(ids)
        if forced is not None:
            length = next((i for i in range(1, len(ids)) if forced(ids[:i])), length)
        steps.append(length)
    return steps


def answer_lengths(examples: Sequence[Example], forced: Forced | None) -> list[int]:
    """Decoding steps of a trained model writing each example's answer (``decoding_steps`` of the answers)."""
    return decoding_steps([example.answer_ids for example in examples], forced)


def generated_steps(new_ids: Tensor, ending: Ending, max_new_tokens: int) -> list[int]:
    """Decoding steps each row of ``greedy_generate``'s output took: up to its first EOS, or all
    ``max_new_tokens`` for a row that never ended."""
    outputs = []
    for row in new_ids.tolist():
        end = row.index(ending.eos_token_id) + 1 if ending.eos_token_id in row else max_new_tokens
        outputs.append(row[:end])
    return [min(n, max_new_tokens) for n in decoding_steps(outputs, ending.forced)]


def spread(examples: Sequence[Example], count: int) -> list[Example]:
    """``count`` examples spread evenly over ``examples`` (short and long prompts alike)."""
    if len(examples) <= count:
        return list(examples)
    step = len(examples) / count
    return [examples[int(i * step)] for i in range(count)]


def shape_of(example: Example) -> Shape:
    return Shape(prompt=len(example.prompt_ids), full=len(example))


def measure_validation_cost(
    model: nn.Module,
    collate: Callable[[Sequence[Example]], dict],
    prompts: Sequence[Example],
    lengths: Sequence[int] | None,
    max_new_tokens: int,
    move: Callable[[dict], dict],
    ending: Ending | None = None,
) -> tuple[ValidationCost, list[int]]:
    """Time one loss chunk and generation at two batch sizes (``model`` in eval mode, inside the caller's
    no-grad, autocast and merged-weights contexts), fit the cost model to them, and return it with the rows'
    decoding lengths. ``lengths`` None: the larger batch is generated to its own ends (``ending``), and the
    steps its rows took are the lengths (the smaller batch then stops its rows at those)."""
    if lengths is None and ending is None:
        raise ValueError("measure_validation_cost needs the rows' lengths or how generation ends them (ending)")
    warm = move(collate(spread(prompts, 4)))
    greedy_generate(model, warm["prompt_ids"], warm["prompt_mask"], 2, eos_token_id=-1)  # one-off costs, untimed
    rows = spread(prompts, LOSS_CHUNK_ROWS)
    batch = move(collate(rows))
    seconds = []
    for _ in range(2):  # the faster of two: one forward of a few seconds on a shared machine can be far off
        start = time.perf_counter()
        chunked_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        seconds.append(time.perf_counter() - start)
    per_token = min(seconds) / loss_tokens([shape_of(ex) for ex in rows])
    prefills: list[tuple[int, float]] = []
    steps: list[tuple[int, float]] = []
    sizes = sorted({min(SMALL_BATCH, len(prompts)), min(LARGE_BATCH, len(prompts))}, reverse=lengths is None)
    body, _ = causal_lm_parts(model)
    for n in sizes:
        examples = spread(prompts, n)
        batch = move(collate(examples))
        with StepClock(body) as clock:
            if lengths is None:
                assert ending is not None
                new_ids = greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens, ending.eos_token_id, ending.forced)
                lengths = generated_steps(new_ids, ending, max_new_tokens)
            else:
                stops = [min(n_, max_new_tokens) for n_ in cycled(lengths, 0, n)]
                greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens, eos_token_id=-1, stop_lengths=stops)
        (_, prefill_s), *decoding = clock.intervals()
        prefills.append((prefill_tokens([shape_of(ex) for ex in examples]), prefill_s))
        steps.extend(decoding)
    assert lengths is not None
    return ValidationCost.fit(per_token, prefills, steps), list(lengths)


class StepClock:
    """The seconds of each forward of ``body`` and what follows it up to the next one (a decoding step: the
    forward, the head, the host copy, the hook), with the rows it ran, from a forward pre-hook."""

    def __init__(self, body: nn.Module) -> None:
        self.body = body
        self.starts: list[tuple[int, float]] = []
        self.end = 0.0

    def __enter__(self) -> StepClock:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.starts.append((int(ids.shape[0]) if ids is not None else 0, time.perf_counter()))

        self._handle = self.body.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = time.perf_counter()
        self._handle.remove()

    def intervals(self) -> list[tuple[int, float]]:
        """(rows, seconds) per forward, the prefill first."""
        ends = [t for _, t in self.starts[1:]] + [self.end]
        return [(rows, end - start) for (rows, start), end in zip(self.starts, ends)]


def plan_final_validation(
    model: nn.Module,
    datamodule: Any,
    ending: Ending,
    max_new_tokens: int,
    contexts: Sequence[contextlib.AbstractContextManager],
    max_seconds: float | None,
    as_it_answers: bool = False,
) -> float:
    """Time validation on this machine, cut the data module's generated sets to fit ``max_seconds`` (saying so),
    and return the planned seconds. ``contexts``: what validation runs inside (no-grad, autocast, merged LoRA).
    ``as_it_answers``: the model has trained, so its rows run as long as it now answers (else as long as the
    training answers)."""
    sets = datamodule.val_examples
    if not any(sets.values()):
        return 0.0
    prompts = [example for examples in sets.values() for example in examples]
    lengths = None
    if not as_it_answers:
        answers = spread(datamodule.train_examples or prompts, LARGE_BATCH)
        lengths = [min(n, max_new_tokens) for n in answer_lengths(answers, ending.forced)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            cost, lengths = measure_validation_cost(
                model, datamodule.eval_collator(), prompts, lengths, max_new_tokens, lambda batch: as_device_batch(batch, device), ending
            )
    finally:
        model.train(was_training)
    shapes = {name: [shape_of(example) for example in examples] for name, examples in sets.items()}
    loss_set = MAIN_VAL_SET if MAIN_VAL_SET in sets else None
    batch_size = datamodule.hparams.eval_batch_size
    plan = plan_validation(shapes, datamodule.generated_val_sets, cost, lengths, batch_size, loss_set, max_seconds)
    if plan.cut:
        sizes = {name: len(examples) for name, examples in sets.items()}
        datamodule.limit_val_sets(plan.sizes)
        listing = ", ".join(f"{name} {sizes[name]} -> {n}" for name, n in plan.sizes.items() if n != sizes[name])
        rank_zero_info(
            f"validation: {listing} questions, so that it takes ~{plan.seconds:.0f} s, within "
            f"{max_seconds:.0f} s of the time budget (hand-written and file sets stay whole)"
        )
    return plan.seconds


def as_device_batch(batch: dict, device: torch.device) -> dict:
    """The collated batch's tensors on ``device``."""
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}
