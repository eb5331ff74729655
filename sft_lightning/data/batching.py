"""Turning tokenised examples into padded batches, and ordering them to waste little padding.

Nothing here calls the tokenizer (examples are tokenised once in ``SFTDataModule.setup``): the hot path only copies lists to tensors.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenised record: ``prompt_ids + answer_ids`` is what the model trains on.

    ``index`` is the record's position in the data module's list it was tokenised from (for
    training, ``train_records``/``train_examples``), carried into batches as ``sample_ids`` so a
    bad step can be traced to its records; -1 for examples built by hand outside a data module.
    """

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    question: str
    answer: float | str | None
    index: int = -1
    prompt_labels: tuple[int, ...] | None = None  # labels of the prompt's positions (earlier assistant turns); None: all -100

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


class TrainCollator:
    """Right-padded ``input_ids``/``attention_mask``/``labels``; labels are -100 on the prompt
    and on padding, so only answer tokens (and the closing EOS) are supervised.

    ``sample_ids`` ([B], long) holds each row's ``Example.index``: the gradient-health callback
    names the records of a non-finite step from it (``SFTDataModule.describe_samples``).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[Example]) -> dict[str, Tensor]:
        width = max(len(ex) for ex in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ex in enumerate(examples):
            ids = ex.prompt_ids + ex.answer_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, len(ex.prompt_ids) : len(ids)] = torch.tensor(ex.answer_ids)
            if ex.prompt_labels is not None:
                labels[row, : len(ex.prompt_ids)] = torch.tensor(ex.prompt_labels, dtype=torch.long)
        sample_ids = torch.tensor([ex.index for ex in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "sample_ids": sample_ids}


class EvalCollator(TrainCollator):
    """The training tensors (for ``val/loss``) plus left-padded prompts for generation, the
    expected values (``expected``: numbers, NaN for a text answer; ``answers``: as given) and the
    questions (for sample logging)."""

    def __call__(self, examples: Sequence[Example]) -> dict[str, object]:
        batch: dict[str, object] = dict(super().__call__(examples))
        batch["prompt_ids"], batch["prompt_mask"] = left_pad([ex.prompt_ids for ex in examples], self.pad_token_id)
        numbers = [ex.answer if isinstance(ex.answer, (int, float)) else float("nan") for ex in examples]
        batch["expected"] = torch.tensor(numbers, dtype=torch.float64)
        batch["answers"] = [ex.answer for ex in examples]
        batch["questions"] = [ex.question for ex in examples]
        return batch


@dataclass(frozen=True)
class PromptExample:
    """One tokenised question to answer, with its position in the user's file."""

    index: int
    prompt_ids: tuple[int, ...]
    question: str
    expected: float | str | None


class PredictCollator:
    """Left-padded prompts (generation continues at the last column) plus what the rows need."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[PromptExample]) -> dict[str, Any]:
        prompt_ids, prompt_mask = left_pad([ex.prompt_ids for ex in examples], self.pad_token_id)
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "indices": [ex.index for ex in examples],
            "questions": [ex.question for ex in examples],
            "expected": [ex.expected for ex in examples],
        }


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` with every row right-aligned, as ``greedy_generate`` requires."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which neighbours have similar lengths, so dynamic padding wastes little.

    Per epoch: shuffle, cut into mega-batches of ``batch_size * group_factor``, sort each by length, cut into batches,
    shuffle the full ones (a short one goes last). Yields indices, so Lightning can wrap it for DDP. Left-out samples
    (``left_out_source``, asked at each epoch's start) go before the shuffle, so an epoch without any keeps its order;
    a resumed loader pins the epoch's set (``pin_left_out``) so the epoch goes on in the order it started with.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_factor: int = 50) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_factor = group_factor
        self.epoch = 0
        self._skip = 0
        self.left_out_source: Callable[[], Iterable[int]] | None = None
        self.left_out: frozenset[int] = frozenset()
        self._pinned: frozenset[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning's fit loop so every epoch gets a new, reproducible order."""
        self.epoch = epoch

    def skip_next(self, n_indices: int) -> None:
        """Start the next ``__iter__`` (only that one) ``n_indices`` into the epoch's order.

        For resuming mid-epoch: the skipped examples are never loaded or collated.
        """
        if n_indices < 0:
            raise ValueError(f"n_indices must be >= 0, got {n_indices}")
        self._skip = n_indices

    def pin_left_out(self, ids: Iterable[int]) -> None:
        """Leave out exactly ``ids`` in the next ``__iter__`` (a resumed epoch keeps the set it started with)."""
        self._pinned = frozenset(int(i) for i in ids)

    def __len__(self) -> int:
        return len(self.lengths) - len(self.left_out)

    def __iter__(self) -> Iterator[int]:
        if self._pinned is not None:
            self.left_out, self._pinned = self._pinned, None
        elif self.left_out_source is not None:
            self.left_out = frozenset(i for i in map(int, self.left_out_source()) if 0 <= i < len(self.lengths))
        rng = random.Random(self.seed + self.epoch)
        order = [i for i in range(len(self.lengths)) if i not in self.left_out]
        rng.shuffle(order)
        group = self.batch_size * self.group_factor
        batches: list[list[int]] = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=self.lengths.__getitem__, reverse=True)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        # Only the last chunk can end in a short batch; keep it last so that every other
        # batch_size-long run of indices is exactly one length-sorted batch.
        full = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(full)
        full.extend(b for b in batches if len(b) < self.batch_size)
        skip, self._skip = self._skip, 0
        return itertools.islice((index for batch in full for index in batch), skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside the epoch is saved in Lightning checkpoints.

    Lightning restores the position only of loaders with ``state_dict``/``load_state_dict``;
    any other loader restarts its epoch on resume, so a run interrupted mid-epoch would then
    train on different batches than an uninterrupted one. The state is the sampler's epoch
    and the number of batches yielded in it; a resumed iterator of the same epoch skips them
    (a ``LengthGroupedSampler`` skips their indices, so nothing is loaded for them).
    """

    # Class-level defaults keep DataLoader's own __init__ signature, which Lightning inspects
    # to re-create the loader (e.g. with a distributed sampler).
    _epoch: int = 0
    _yielded: int = 0
    _resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self._epoch, "batches": self._yielded}
        if isinstance(self.sampler, LengthGroupedSampler) and self.sampler.left_out:
            state["left_out"] = sorted(self.sampler.left_out)  # the epoch's skip list, kept on resume
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        if state.get("left_out"):
            self._resume["left_out"] = list(state["left_out"])

    def position(self) -> dict[str, Any]:
        """What a checkpoint saved now would hold, a resume not yet started included (``PromptStop``)."""
        return dict(self._resume) if self._resume is not None else self.state_dict()

    def load_position(self, position: dict[str, int]) -> None:
        """Go back to ``position`` (from ``position()``): the batches fetched since were not trained on."""
        self._epoch, self._yielded = int(position["epoch"]), int(position["batches"])

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # Runs at the first next(), i.e. after Lightning's set_epoch for this epoch.
        epoch = int(getattr(self.sampler, "epoch", 0))
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        if skip and isinstance(self.sampler, LengthGroupedSampler):
            self.sampler.pin_left_out(resume.get("left_out", ()))
        self._epoch, self._yielded = epoch, skip
        fast = skip and isinstance(self.sampler, LengthGroupedSampler) and self.batch_size is not None
        if fast:
            self.sampler.skip_next(skip * self.batch_size)  # before the iterator (and workers) start
        iterator = super().__iter__()
        if skip and not fast:  # any other sampler (e.g. a distributed wrapper): load and drop
            for _ in itertools.islice(iterator, skip):
                pass
        for batch in iterator:
            self._yielded += 1  # counted before the consumer gets it: a checkpoint then includes it
            yield batch
