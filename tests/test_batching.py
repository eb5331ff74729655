"""Tests for sft_lightning.data.batching: collators and the length-grouped sampler."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from sft_lightning.data.batching import IGNORE_INDEX, EvalCollator, Example, LengthGroupedSampler, TrainCollator

PAD = 0


def _examples() -> list[Example]:
    return [
        Example(prompt_ids=(11, 12, 13), answer_ids=(21, 22, 2), question="q-a", answer=1.5),
        Example(prompt_ids=(31, 32, 33, 34, 35), answer_ids=(41, 2), question="q-b", answer=-2.0),
        Example(prompt_ids=(51,), answer_ids=(61, 62, 63, 64, 2), question="q-c", answer=1e9 + 1),
    ]


def test_example_len_is_prompt_plus_answer() -> None:
    assert [len(ex) for ex in _examples()] == [6, 7, 6]


def test_ignore_index_matches_torch_cross_entropy_default() -> None:
    assert IGNORE_INDEX == -100 == torch.nn.CrossEntropyLoss().ignore_index


def test_train_collator_exact_tensors() -> None:
    batch = TrainCollator(pad_token_id=PAD)(_examples())
    assert set(batch) == {"input_ids", "attention_mask", "labels", "sample_ids"}
    assert batch["sample_ids"].tolist() == [-1, -1, -1]  # hand-built examples have no dataset index
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 21, 22, 2, PAD],
        [31, 32, 33, 34, 35, 41, 2],
        [51, 61, 62, 63, 64, 2, PAD],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0],
    ]
    M = IGNORE_INDEX
    assert batch["labels"].tolist() == [
        [M, M, M, 21, 22, 2, M],
        [M, M, M, M, M, 41, 2],
        [M, 61, 62, 63, 64, 2, M],
    ]
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].dtype == torch.long


def test_train_collator_labels_property_random() -> None:
    rng = random.Random(0)
    pad = 7
    examples = [
        Example(
            prompt_ids=tuple(rng.randrange(10, 100) for _ in range(rng.randint(1, 12))),
            answer_ids=tuple(rng.randrange(10, 100) for _ in range(rng.randint(1, 6))),
            question=f"q{i}",
            answer=float(i),
        )
        for i in range(16)
    ]
    batch = TrainCollator(pad_token_id=pad)(examples)
    width = max(len(ex) for ex in examples)
    assert batch["input_ids"].shape == (16, width)
    for row, ex in enumerate(examples):
        n_p, n = len(ex.prompt_ids), len(ex)
        ids, mask, labels = batch["input_ids"][row], batch["attention_mask"][row], batch["labels"][row]
        assert ids[:n].tolist() == list(ex.prompt_ids + ex.answer_ids)
        assert ids[n:].tolist() == [pad] * (width - n)  # right padding
        assert mask.tolist() == [1] * n + [0] * (width - n)
        assert labels[:n_p].tolist() == [IGNORE_INDEX] * n_p  # prompt not supervised
        assert labels[n_p:n].tolist() == list(ex.answer_ids)  # answer supervised
        assert labels[n:].tolist() == [IGNORE_INDEX] * (width - n)  # padding not supervised
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(len(ex.answer_ids) for ex in examples)


def test_train_collator_pad_id_used_even_if_it_is_a_real_token() -> None:
    # Padding is marked by the attention mask and -100 labels, not by the pad id.
    batch = TrainCollator(pad_token_id=2)(_examples())
    assert batch["input_ids"][0, -1].item() == 2
    assert batch["attention_mask"][0, -1].item() == 0
    assert batch["labels"][0, -1].item() == IGNORE_INDEX
    assert batch["labels"][0, 5].item() == 2  # the real EOS is supervised


def test_eval_collator_includes_training_tensors() -> None:
    examples = _examples()
    train = TrainCollator(PAD)(examples)
    batch = EvalCollator(PAD)(examples)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], train[key])


def test_eval_collator_left_pads_prompts() -> None:
    batch = EvalCollator(pad_token_id=PAD)(_examples())
    assert batch["prompt_ids"].tolist() == [
        [PAD, PAD, 11, 12, 13],
        [31, 32, 33, 34, 35],
        [PAD, PAD, PAD, PAD, 51],
    ]
    assert batch["prompt_mask"].tolist() == [
        [0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1],
    ]
    assert batch["prompt_ids"].dtype == torch.long
    assert batch["prompt_mask"].dtype == torch.long
    # The next token of every row is generated after the last column: the last prompt token.
    assert batch["prompt_ids"][:, -1].tolist() == [13, 35, 51]
    # Prompts only: no answer token leaks into the generation input.
    assert not set(batch["prompt_ids"].flatten().tolist()) & {21, 22, 41, 61, 62, 63, 64, 2}


def test_eval_collator_expected_and_questions() -> None:
    batch = EvalCollator(pad_token_id=PAD)(_examples())
    assert batch["expected"].dtype == torch.float64
    assert batch["expected"].tolist() == [1.5, -2.0, 1e9 + 1]  # float64 keeps the +1
    assert batch["questions"] == ["q-a", "q-b", "q-c"]


def test_eval_collator_single_example() -> None:
    ex = Example(prompt_ids=(5, 6), answer_ids=(7,), question="q", answer=3.0)
    batch = EvalCollator(pad_token_id=PAD)([ex])
    assert batch["prompt_ids"].tolist() == [[5, 6]]
    assert batch["prompt_mask"].tolist() == [[1, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7]]


# --------------------------------------------------------------------------------------------
# LengthGroupedSampler
# --------------------------------------------------------------------------------------------


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 200) for _ in range(n)]


@pytest.mark.parametrize(("n", "batch_size", "group_factor"), [(1000, 8, 50), (997, 8, 50), (103, 4, 3), (5, 8, 50), (1, 1, 1)])
def test_sampler_is_a_permutation(n: int, batch_size: int, group_factor: int) -> None:
    sampler = LengthGroupedSampler(_lengths(n), batch_size=batch_size, seed=3, group_factor=group_factor)
    order = list(sampler)
    assert len(sampler) == n
    assert sorted(order) == list(range(n))


def test_sampler_deterministic_per_seed_and_epoch() -> None:
    lengths = _lengths(500)
    a = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    b = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again gives the same order
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)


def test_sampler_differs_across_epochs_and_seeds() -> None:
    lengths = _lengths(500)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert len({tuple(o) for o in orders}) == 4
    # Not just a rotation: the batches themselves (the sets of indices) change between epochs.
    batches = [{frozenset(o[i : i + 8]) for i in range(0, 500, 8)} for o in orders]
    assert len(batches[0] & batches[1]) < len(batches[0]) // 2
    other_seed = LengthGroupedSampler(lengths, batch_size=8, seed=2)
    assert list(other_seed) != orders[0]


def _mean_spread(order: list[int], lengths: list[int], batch_size: int) -> float:
    spreads = []
    for i in range(0, len(order) - batch_size + 1, batch_size):
        chunk = [lengths[j] for j in order[i : i + batch_size]]
        spreads.append(max(chunk) - min(chunk))
    return statistics.mean(spreads)


def test_sampler_batches_have_low_length_spread() -> None:
    n, batch_size = 2000, 8
    lengths = _lengths(n, seed=5)  # uniform 5..200
    sampler = LengthGroupedSampler(lengths, batch_size=batch_size, seed=0, group_factor=50)
    grouped = _mean_spread(list(sampler), lengths, batch_size)
    shuffled = list(range(n))
    random.Random(0).shuffle(shuffled)
    baseline = _mean_spread(shuffled, lengths, batch_size)
    # Random batches of 8 from U(5, 200) span ~ 195 * 7/9 ~ 150; sorted mega-batches of 400
    # leave ~ 195 * 8/400 ~ 4 between neighbours.
    assert baseline > 120
    assert grouped < 10
    assert grouped < baseline / 15
    # Every batch (not only on average) is tight.
    order = list(sampler)
    worst = max(
        max(lengths[j] for j in order[i : i + batch_size]) - min(lengths[j] for j in order[i : i + batch_size])
        for i in range(0, n, batch_size)
    )
    assert worst < 20


def test_sampler_each_full_batch_is_length_sorted_and_batches_are_shuffled() -> None:
    n, batch_size = 800, 8
    lengths = _lengths(n, seed=9)
    order = list(LengthGroupedSampler(lengths, batch_size=batch_size, seed=4, group_factor=10))
    batch_max = []
    for i in range(0, n, batch_size):
        chunk = [lengths[j] for j in order[i : i + batch_size]]
        assert chunk == sorted(chunk, reverse=True)
        batch_max.append(chunk[0])
    # Batches are shuffled, not globally sorted longest-first.
    assert batch_max != sorted(batch_max, reverse=True)
    assert batch_max != sorted(batch_max)


@pytest.mark.parametrize(("n", "batch_size", "group_factor"), [(1003, 8, 50), (1003, 8, 3), (45, 4, 2), (7, 8, 50)])
def test_sampler_short_batch_only_at_end(n: int, batch_size: int, group_factor: int) -> None:
    lengths = _lengths(n, seed=n)
    sampler = LengthGroupedSampler(lengths, batch_size=batch_size, seed=0, group_factor=group_factor)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        n_full = n // batch_size
        rest = n % batch_size
        assert rest > 0
        # Every batch_size-long run before the tail is one length-sorted batch...
        for i in range(0, n_full * batch_size, batch_size):
            chunk = [lengths[j] for j in order[i : i + batch_size]]
            assert chunk == sorted(chunk, reverse=True)
        # ...and the short batch is the final `rest` indices, also sorted (from the last chunk).
        tail = [lengths[j] for j in order[n_full * batch_size :]]
        assert len(tail) == rest
        assert tail == sorted(tail, reverse=True)


def test_sampler_invalid_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        LengthGroupedSampler([1, 2, 3], batch_size=0)


def test_sampler_works_with_dataloader_and_set_epoch() -> None:
    from torch.utils.data import DataLoader

    lengths = _lengths(64)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=0)
    loader = DataLoader(list(range(64)), batch_size=8, sampler=sampler)
    first = [b.tolist() for b in loader]
    sampler.set_epoch(1)
    second = [b.tolist() for b in loader]
    assert sorted(x for b in first for x in b) == list(range(64))
    assert first != second
    for b in first:
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls, reverse=True)
