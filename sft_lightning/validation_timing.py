"""Timing validation before training starts, in seconds, for ``TimeBudget``'s plan.

One batch runs the validation loss forward, and two small batches of validation prompts are
generated as a trained model would run them (rows stop after a training answer's length, or where
the calculator takes over); ``sft_lightning.validation_plan`` fits its cost model to the times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from sft_lightning.batching import Example
from sft_lightning.generation import greedy_generate
from sft_lightning.loss import supervised_loss_sum
from sft_lightning.metrics import MAIN_VAL_SET
from sft_lightning.validation_plan import Shape, ValidationCost, cycled, loss_tokens, plan_validation

SMALL_BATCH = 16
LARGE_BATCH = 48
LOSS_BATCH = 32


def answer_lengths(examples: Sequence[Example], forced: Callable[[list[int]], list[int] | None] | None) -> list[int]:
    """Tokens a trained model generates for each example's answer: all of it (with EOS), or up to the point
    where ``forced`` (the calculator) writes the rest at once."""
    lengths = []
    for example in examples:
        ids = list(example.answer_ids)
        length = len(ids)
        if forced is not None:
            length = next((i for i in range(1, len(ids)) if forced(ids[:i])), length)
        lengths.append(length)
    return lengths


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
    lengths: Sequence[int],
    max_new_tokens: int,
    move: Callable[[dict], dict],
) -> ValidationCost:
    """Time one loss forward and generation at two batch sizes (``model`` in eval mode, inside the caller's
    no-grad, autocast and merged-weights contexts), and fit the cost model to them."""
    warm = move(collate(spread(prompts, 4)))
    greedy_generate(model, warm["prompt_ids"], warm["prompt_mask"], 2, eos_token_id=-1)  # one-off costs, untimed
    rows = spread(prompts, LOSS_BATCH)
    batch = move(collate(rows))
    start = time.perf_counter()
    supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    per_token = (time.perf_counter() - start) / loss_tokens([shape_of(ex) for ex in rows])
    timed = []
    for n in sorted({min(SMALL_BATCH, len(prompts)), min(LARGE_BATCH, len(prompts))}):
        examples = spread(prompts, n)
        stops = cycled(lengths, 0, n)
        batch = move(collate(examples))
        start = time.perf_counter()
        greedy_generate(model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens, eos_token_id=-1, stop_lengths=stops)
        timed.append(([shape_of(ex) for ex in examples], [min(n_, max_new_tokens) for n_ in stops], time.perf_counter() - start))
    return ValidationCost.fit(per_token, timed)


def plan_final_validation(
    model: nn.Module,
    datamodule: Any,
    forced: Callable[[list[int]], list[int] | None] | None,
    max_new_tokens: int,
    contexts: Sequence[contextlib.AbstractContextManager],
    max_seconds: float | None,
) -> float:
    """Time validation on this machine, cut the data module's generated sets to fit ``max_seconds`` (saying so),
    and return the planned seconds. ``contexts``: what validation runs inside (no-grad, autocast, merged LoRA)."""
    sets = datamodule.val_examples
    if not any(sets.values()):
        return 0.0
    prompts = [example for examples in sets.values() for example in examples]
    lengths = [min(n, max_new_tokens) for n in answer_lengths(spread(datamodule.train_examples or prompts, LARGE_BATCH), forced)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            cost = measure_validation_cost(
                model, datamodule.eval_collator(), prompts, lengths, max_new_tokens, lambda batch: as_device_batch(batch, device)
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
