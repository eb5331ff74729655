"""SFTDataModule's sets: worked targets for generated questions, the held-out-phrasing set, named
extra validation files (the hand-written set), and the hand-written set itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.data.records import DataError, load_records
from sft_lightning.evaluation.metrics import parse_answer
from sft_lightning.models.loading import TINY_RANDOM
from sft_lightning.tasks.unit_conversion.generator import normalize_question

HANDWRITTEN = REPO / "data" / "handwritten.jsonl"


def datamodule(**kwargs) -> SFTDataModule:
    # the tiny model's tokenizer has one token per character: worked answers need room
    args = {"train_size": 200, "val_size": 20, "tokenizer": TINY_RANDOM, "significant_digits": 3, "max_length": 256, **kwargs}
    return SFTDataModule(**args)


def test_generated_questions_train_on_worked_answers_and_files_on_the_bare_tag(tmp_path: Path) -> None:
    dm = datamodule()
    target = dm.train_records[0].target
    assert target is not None and "=" in target.split("<answer>")[0] and target.endswith("</answer>")
    assert parse_answer(target) == pytest.approx(dm.train_records[0].answer, rel=0.01, abs=0.006)
    assert all(r.target is None for r in datamodule(answer_format="bare").train_records)
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([["How many m in 1 km?", 1000]] * 30))
    assert all(r.target is None for r in datamodule(train_file=str(data), val_size=5).train_records)


def test_tokenised_examples_supervise_exactly_the_target(tmp_path: Path) -> None:
    dm = datamodule(train_size=50, val_size=5)
    dm.setup("fit")
    tok = dm.tokenizer
    example, record = dm.train_examples[0], dm.train_records[0]
    assert tok.decode(list(example.answer_ids[:-1])) == record.target
    assert example.answer_ids[-1] == tok.eos_token_id


def test_validation_sets_are_named_and_ordered(tmp_path: Path) -> None:
    extra = tmp_path / "mine.jsonl"
    extra.write_text('{"question": "How many g in 2 kg?", "answer": 2000, "note": "extra fields are ignored"}\n')
    dm = datamodule(unseen_val_size=10, extra_val_files={"mine": str(extra)})
    assert dm.val_set_names == ["val", "val_unseen", "mine"]
    assert [len(dm.val_sets[n]) for n in dm.val_set_names] == [20, 10, 1]
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 3
    assert sum(len(b["questions"]) for b in loaders[2]) == 1
    single = datamodule()
    single.setup("fit")
    assert not isinstance(single.val_dataloader(), list)  # one set: one loader, as before


@pytest.mark.parametrize(("name", "message"), [("1st", "must start with a letter"), ("val", "is taken"), ("a/b", "must start with a letter")])
def test_bad_extra_set_names_are_clear_errors(tmp_path: Path, name: str, message: str) -> None:
    extra = tmp_path / "mine.jsonl"
    extra.write_text('{"question": "q", "answer": 1}\n')
    with pytest.raises(DataError, match=message):
        datamodule(extra_val_files={name: str(extra)})


def test_missing_extra_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        datamodule(extra_val_files={"mine": str(tmp_path / "nope.jsonl")})


# ------------------------------------------------------------------ the hand-written set


def test_handwritten_set_is_large_checked_and_up_to_date(tmp_path: Path) -> None:
    records = load_records(HANDWRITTEN)
    assert len(records) >= 200
    # the script recomputes every answer with pint, cross-checks it against its own factor table
    # and fails on any disagreement; what it writes must be what the repository holds
    out = subprocess.run([sys.executable, str(REPO / "data" / "make_handwritten.py"), "--check"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_the_written_sets_are_checked_and_up_to_date() -> None:
    for name in ("a", "b"):
        assert len(load_records(REPO / "data" / "written" / f"{name}.jsonl")) == 350
    out = subprocess.run([sys.executable, str(REPO / "data" / "written" / "make_written.py"), "--check"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_no_validation_question_is_trained_on(tmp_path: Path) -> None:
    """Short questions ("1 TB to GB") are written alike by anyone: the generated training set leaves
    out every question a validation set asks, the hand-written ones included."""
    plain = datamodule(train_size=2000)
    asked = tmp_path / "asked.jsonl"
    picked = plain.train_records[::100]
    asked.write_text("".join(json.dumps({"question": r.question.upper() + " ", "answer": r.answer}) + "\n" for r in picked))
    dm = datamodule(train_size=2000, extra_val_files={"asked": str(asked), "handwritten": str(HANDWRITTEN)})
    trained = {normalize_question(r.question) for r in dm.train_records}
    assert not {normalize_question(r.question) for r in picked} & trained  # case and spacing do not matter
    assert not {normalize_question(r.question) for r in load_records(HANDWRITTEN)} & trained
    assert len(dm.train_records) <= 2000 - len(picked)


def test_a_budget_cuts_only_the_generated_sets_and_loaders_follow(tmp_path) -> None:
    from sft_lightning.data.datamodule import SFTDataModule

    hand = tmp_path / "hand.jsonl"
    hand.write_text("".join(f'{{"question": "How many grams are in {i} kg?", "answer": {i * 1000}}}\n' for i in range(1, 8)))
    dm = SFTDataModule(
        train_size=40, val_size=30, unseen_val_size=20, tokenizer="tiny-random", eval_batch_size=8,
        extra_val_files={"hand": str(hand)}, max_length=512,  # the tiny tokenizer: a token per character
    )
    assert dm.generated_val_sets == ["val", "val_unseen"]
    dm.setup("fit")
    first = [ex.question for ex in dm.val_examples["val"][:12]]
    dm.limit_val_sets({"val": 12, "val_unseen": 5, "hand": 7})
    assert [len(dm.val_sets[name]) for name in ("val", "val_unseen", "hand")] == [12, 5, 7]
    assert [ex.question for ex in dm.val_examples["val"]] == first
    assert [len(loader.dataset) for loader in dm.val_dataloader()] == [12, 5, 7]


def test_a_users_files_are_never_cut(tmp_path) -> None:
    from sft_lightning.data.datamodule import SFTDataModule

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(f'{{"question": "What is {i} plus {i}?", "answer": {2 * i}}}\n' for i in range(40)))
    dm = SFTDataModule(train_file=str(data), val_size=10, tokenizer="tiny-random", max_length=512)
    assert dm.generated_val_sets == []
