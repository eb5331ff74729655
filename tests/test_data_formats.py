"""Every accepted format, with numeric and text answers, read into the same records; each bad file is one error
naming the file (``sft_lightning.data.files``, ``data_formats``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sft_lightning.data.records import DataError, QARecord, holdout_fraction, load_records

SYSTEM = {"role": "system", "content": "Answer briefly."}


def _rows(answer: str) -> dict[str, dict]:
    """One row of each format whose answer is ``answer`` (the question: 'Capital of France?')."""
    return {
        "prompt/completion": {"prompt": "Capital of France?", "completion": answer},
        "messages": {"messages": [SYSTEM, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": answer}]},
        "alpaca": {"instruction": "Capital of France?", "input": "", "output": answer},
        "question/answer": {"question": "Capital of France?", "answer": answer},
    }


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", ["prompt/completion", "alpaca", "question/answer"])
@pytest.mark.parametrize(("answer", "expected"), [("Paris", "Paris"), ("48", 48.0), ("2 + 46 = 48.\n#### 48", 48.0)])
def test_each_format_and_file_type_gives_the_same_record(tmp_path: Path, suffix: str, fmt: str, answer: str, expected: object) -> None:
    (record,) = load_records(_write(tmp_path / f"d{suffix}", [_rows(answer)[fmt]]))
    assert (record.question, record.answer, record.context) == ("Capital of France?", expected, ())
    tagged = fmt == "question/answer" and isinstance(expected, float) and "####" not in answer
    assert record.target == (None if tagged else answer)  # a bare number keeps the project's <answer> tag
    assert record.origin.startswith(str(tmp_path / f"d{suffix}"))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_messages_multi_turn_with_a_system_message(tmp_path: Path, suffix: str) -> None:
    turns = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    (record,) = load_records(_write(tmp_path / f"d{suffix}", [{"messages": turns}]))
    assert record == QARecord("Capital of France?", "Paris", "Paris", None, (("system", "Answer briefly."), ("user", "Hi"), ("assistant", "Hello")))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_conversational_prompt_completion_is_a_conversation(tmp_path: Path, suffix: str) -> None:
    row = {"prompt": [SYSTEM, {"role": "user", "content": "Capital of France?"}],
           "completion": [{"role": "assistant", "content": "Paris"}]}
    (record,) = load_records(_write(tmp_path / f"d{suffix}", [row]))
    assert record == QARecord("Capital of France?", "Paris", "Paris", None, (("system", "Answer briefly."),))


def test_text_records_are_trained_on_whole_and_not_scored(tmp_path: Path) -> None:
    (record,) = load_records(_write(tmp_path / "d.jsonl", [{"text": "Paris is the capital of France."}]))
    assert (record.question, record.answer, record.target) == ("", None, "Paris is the capital of France.")


def test_json_pairs_and_numeric_answers_as_before(tmp_path: Path) -> None:
    records = load_records(_write(tmp_path / "d.json", [["6 km in m?", 6000], ["Capital of Peru?", "Lima"]]))  # type: ignore[list-item]
    assert [(r.answer, r.target) for r in records] == [(6000.0, None), ("Lima", "Lima")]


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.jsonl", "", ["empty.jsonl: contains no records"]),
        ("header.csv", "prompt,completion\n", ["header.csv: contains no records"]),
        ("bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c" "completion": "d"}\n', ["bad.jsonl: line 2, column 16: invalid JSON"]),
        ("missing.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n',
         ["missing.jsonl: line 2: missing field 'completion'", 'Fix: each line needs {"prompt": ..., "completion": ...}']),
        ("other.csv", "foo,bar\n1,2\n", ["other.csv: no known format fits the columns ['bar', 'foo']", "Formats accepted: messages",
                                         "prompt/completion", "alpaca: instruction/output", "question/answer", "text"]),
        ("turns.jsonl", json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n", ["turns.jsonl: line 1: messages must be"]),
        ("ends.jsonl", json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}) + "\n",
         ["must end with a user turn and the assistant's answer"]),
    ],
)
def test_each_bad_file_is_one_error_naming_it(tmp_path: Path, name: str, content: str, fragments: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("n", "held"), [(2, 1), (100, 10), (100_000, 500)])
def test_held_out_share_is_bounded_and_seeded(n: int, held: int) -> None:
    records = [QARecord(f"q{i}", float(i)) for i in range(n)]
    train, chosen = holdout_fraction(records, 0.1, seed=7, bounds=(1, 500))
    assert len(chosen) == held and len(train) == n - held
    assert holdout_fraction(records, 0.1, seed=7, bounds=(1, 500))[1] == chosen  # deterministic by seed
    assert holdout_fraction(records, 0.1, seed=8, bounds=(1, 500))[1] != chosen or n == 2


def test_a_100000_record_file_holds_out_its_bounded_share(tmp_path: Path) -> None:
    from sft_lightning.data.datamodule import SFTDataModule

    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"prompt": "{i} plus 1 is", "completion": "{i + 1}"}}\n' for i in range(100_000)))
    dm = SFTDataModule(train_file=str(path), val_fraction=0.1, tokenizer="tiny-random")
    assert (len(dm.train_records), len(dm.val_records)) == (99_500, 500)
    assert dm.notes == [f"{'val':<16} 500 of the 100000 records of {path} held out (data.val_fraction 0.1, bounded to 1-500, drawn with data.seed 1234)"]
