"""Sample identities for diagnosing a bad step: training batches carry ``sample_ids`` (indices into
the data module's ``train_records``), ``describe_samples`` names those records (file and line, or
generator seed and index), and ``per_sample_loss`` says which rows' losses are non-finite."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from pathlib import Path

import pytest
import torch

from sft_lightning.data.batching import IGNORE_INDEX, Example, TrainCollator
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.data.prompt import format_answer, format_prompt
from sft_lightning.data.records import QARecord, load_records
from sft_lightning.loss import per_sample_loss, supervised_loss_sum
from sft_lightning.models.loading import TINY_RANDOM
from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama
from sft_lightning.module import SFTModule

pytestmark = pytest.mark.usefixtures("one_thread")




def datamodule(**kwargs) -> SFTDataModule:
    args = {"train_size": 40, "val_size": 5, "tokenizer": TINY_RANDOM, "max_length": 256, "batch_size": 4, **kwargs}
    return SFTDataModule(**args)


def _qa(i: int) -> tuple[str, float]:
    """Distinct questions of different lengths (so the length-grouped sampler reorders them)."""
    return f"How many metres are in {i * 37 + 1} km{'?' * (i % 5)}", float((i * 37 + 1) * 1000)


def _write_jsonl(path: Path, n: int, blank_after: Collection[int] = ()) -> dict[int, int]:
    """n records, with a blank (or whitespace-only) line after those in ``blank_after``; returns
    record index -> 1-based line number."""
    lines, line_of = [], {}
    for i in range(n):
        question, answer = _qa(i)
        lines.append(json.dumps({"question": question, "answer": answer}))
        line_of[i] = len(lines)
        if i in blank_after:
            lines.append("   " if i % 2 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return line_of


# --------------------------------------------------------------------------------------------
# sample_ids in batches
# --------------------------------------------------------------------------------------------


def test_collator_sample_ids_are_the_examples_indices() -> None:
    examples = [Example((1, 2), (3,), "a", 1.0, index=7), Example((4,), (5, 6), "b", 2.0, index=0), Example((7,), (8,), "c", 3.0, 12)]
    batch = TrainCollator(pad_token_id=0)(examples)
    assert batch["sample_ids"].dtype == torch.long
    assert batch["sample_ids"].tolist() == [7, 0, 12]


def test_train_loader_sample_ids_are_indices_into_train_records(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, 30)
    dm = datamodule(train_file=str(data), val_size=4, seed=3)
    dm.setup("fit")
    assert [ex.index for ex in dm.train_examples] == list(range(26))
    # held-out validation records are numbered as in the file, after the training records
    assert [ex.index for ex in dm.val_examples["val"]] == list(range(26, 30))

    seen: list[int] = []
    for batch in dm.train_dataloader():
        ids = batch["sample_ids"]
        assert ids.dtype == torch.long and ids.shape == (batch["input_ids"].shape[0],)
        for row, sample_id in enumerate(ids.tolist()):
            example = dm.train_examples[sample_id]
            tokens = list(example.prompt_ids + example.answer_ids)
            assert batch["input_ids"][row, : len(tokens)].tolist() == tokens
            assert int(batch["attention_mask"][row].sum()) == len(tokens)
            assert example.question == dm.train_records[sample_id].question
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(26))  # every record exactly once per epoch
    assert seen != sorted(seen)  # really through the shuffling, length-grouped sampler


def test_eval_batches_carry_sample_ids_too(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, 12)
    dm = datamodule(train_file=str(data), val_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert sorted(batch["sample_ids"].tolist()) == [8, 9, 10, 11]
    for question, sample_id in zip(batch["questions"], batch["sample_ids"].tolist()):
        assert question == _qa(sample_id)[0]


# --------------------------------------------------------------------------------------------
# record origins and describe_samples
# --------------------------------------------------------------------------------------------


def test_jsonl_origins_are_editor_line_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line_of = _write_jsonl(tmp_path / "data" / "train.jsonl", 10, blank_after={0, 3, 4})
    assert [line_of[i] for i in range(6)] == [1, 3, 4, 5, 7, 9]
    records = load_records("data/train.jsonl")
    assert [r.origin for r in records] == [f"data/train.jsonl line {line_of[i]}" for i in range(10)]
    lines = (tmp_path / "data" / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[line_of[5] - 1])["question"] == records[5].question  # what an editor shows there


def test_describe_samples_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line_of = _write_jsonl(tmp_path / "data" / "train.jsonl", 10, blank_after={0, 3, 4})
    dm = datamodule(train_file="data/train.jsonl", val_size=2)
    question5, answer5 = _qa(5)
    assert dm.describe_samples([5, 0]) == [
        f'data/train.jsonl line {line_of[5]}: "{question5}" -> {answer5:.0f}',
        f'data/train.jsonl line 1: "{_qa(0)[0]}" -> 1000',
    ]
    assert line_of[5] == 9
    # the sample_ids tensor of a batch is accepted as it is
    assert dm.describe_samples(torch.tensor([5])) == dm.describe_samples([5])


def test_json_origins_are_one_based_items(tmp_path: Path) -> None:
    data = tmp_path / "train.json"
    data.write_text(json.dumps([["How many g in 1 kg?", 1000], ["How many g in 2 kg?", 2000], ["How many cm in 3 m?", "300"]]))
    records = load_records(data)
    assert [r.origin for r in records] == [f"{data} item 1", f"{data} item 2", f"{data} item 3"]
    dm = datamodule(train_file=str(data), val_size=1)
    assert dm.describe_samples([1]) == [f'{data} item 2: "How many g in 2 kg?" -> 2000']


def test_origin_is_not_part_of_record_equality() -> None:
    a, b = QARecord("q", 1.0, origin="a.jsonl line 1"), QARecord("q", 1.0, origin="b.json item 3")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert QARecord("q", 1.0).origin is None


def test_describe_samples_of_generated_records_name_seed_and_index() -> None:
    dm = datamodule(seed=7)
    assert all(r.origin is None for r in dm.train_records)
    record = dm.train_records[17]
    assert dm.describe_samples([17]) == [f"generated training record 17 (seed 7): {json.dumps(record.question, ensure_ascii=False)} -> {record.answer:.12g}"]
    assert datamodule(seed=7).train_records[17] == record  # the same settings regenerate it


def test_describe_samples_out_of_range_never_raises(tmp_path: Path) -> None:
    dm = datamodule()
    n = len(dm.train_records)
    assert dm.describe_samples([n, 99, -1]) == [
        f"sample {n}: not in the training set (it has {n} records)",
        f"sample 99: not in the training set (it has {n} records)",
        f"sample -1: not in the training set (it has {n} records)",
    ]
    assert dm.describe_samples([]) == []


def test_describe_samples_cuts_long_questions(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    long_question = "How many metres are in " + "very " * 60 + "long 3 km?"
    lines = [json.dumps({"question": long_question, "answer": 3000}), json.dumps({"question": "q2", "answer": 1})]
    data.write_text("\n".join(lines))
    (line,) = datamodule(train_file=str(data), val_size=1).describe_samples([0])
    quoted = line.split(": ", 1)[1].rsplit(" -> ", 1)[0]
    assert quoted == json.dumps(long_question[:117] + "...")
    assert len(json.loads(quoted)) == 120


# --------------------------------------------------------------------------------------------
# per_sample_loss
# --------------------------------------------------------------------------------------------

QUESTIONS = ["How many metres are in 3 miles?", "Convert 5 kg to lb", "Zebra units: 7 Q in W?"]


def _batch() -> dict[str, torch.Tensor]:
    tokenizer = build_char_tokenizer()
    examples = []
    for index, (question, answer) in enumerate(zip(QUESTIONS, [4828.0, 11.02, -0.5])):
        prompt_ids = tuple(tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"])
        answer_ids = (*tokenizer(format_answer(answer), add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
        examples.append(Example(prompt_ids, answer_ids, question, answer, index))
    batch = TrainCollator(tokenizer.pad_token_id)(examples)
    assert len({len(ex) for ex in examples}) == 3  # really a padded batch
    return batch


def _row_by_row(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        loss_sum, count = supervised_loss_sum(
            model, batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1], batch["labels"][i : i + 1]
        )
        rows.append(loss_sum / count)
    return torch.stack(rows)


def test_per_sample_loss_equals_supervised_loss_row_by_row() -> None:
    model = build_tiny_llama(seed=1).eval()
    batch = _batch()
    with torch.no_grad():
        losses = per_sample_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        expected = _row_by_row(model, batch)
        total, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert losses.shape == (3,) and losses.dtype == torch.float32
    torch.testing.assert_close(losses, expected)
    n_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).float()
    torch.testing.assert_close((losses * n_tokens).sum() / count, total / count)


def test_per_sample_loss_is_fp32_under_bf16_autocast() -> None:
    model = build_tiny_llama().eval()
    batch = _batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = per_sample_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()


def test_row_without_supervised_tokens_is_nan_and_others_stay_exact() -> None:
    model = build_tiny_llama(seed=1).eval()
    batch = _batch()
    labels = batch["labels"].clone()
    labels[1] = IGNORE_INDEX
    with torch.no_grad():
        losses = per_sample_loss(model, batch["input_ids"], batch["attention_mask"], labels)
        expected = _row_by_row(model, batch)
    assert math.isnan(losses[1].item())
    assert torch.isfinite(losses[[0, 2]]).all()
    torch.testing.assert_close(losses[[0, 2]], expected[[0, 2]])


def test_poisoned_input_embedding_makes_only_its_row_non_finite() -> None:
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(seed=1).eval()
    batch = _batch()
    (poison,) = tokenizer("Z", add_special_tokens=False)["input_ids"]
    rows_with_it = (batch["input_ids"] == poison).any(dim=1).tolist()
    assert rows_with_it == [False, False, True]  # "Zebra" is only in the last question
    with torch.no_grad():
        clean = per_sample_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        embedding = model.get_input_embeddings()
        embedding.weight = torch.nn.Parameter(embedding.weight.clone())  # untied: the LM head stays clean
        embedding.weight[poison] = float("nan")
        poisoned = per_sample_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert not torch.isfinite(poisoned[2])
    torch.testing.assert_close(poisoned[:2], clean[:2])


def test_module_per_sample_loss_uses_its_model_without_a_graph() -> None:
    module = SFTModule(model="tiny-random", lora_r=4, lora_dropout=0.0)
    module.configure_model()
    module.model.eval()
    batch = _batch()
    losses = module.per_sample_loss(batch)
    assert not losses.requires_grad
    with torch.no_grad():
        expected = _row_by_row(module.model, batch)
    torch.testing.assert_close(losses, expected)
