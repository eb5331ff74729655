"""records.load_questions: the questions file of `sft-lightning predict` (answers optional)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_lightning.data.records import DataError, Question, load_questions


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_one_question_per_line_skipping_blanks_and_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "q.txt", "# header\nHow many m in 1 km?\n\n   \n  5 kg in lb?  \n#x\n")
    assert load_questions(path) == [Question("How many m in 1 km?"), Question("5 kg in lb?")]


def test_json_mixes_strings_pairs_and_objects(tmp_path: Path) -> None:
    data = ["q1", ["q2", 2.5], {"question": "q3"}, {"question": "q4", "answer": "1,000"}, {"question": "q5", "answer": None}]
    path = write(tmp_path, "q.json", json.dumps(data))
    assert load_questions(path) == [
        Question("q1"), Question("q2", 2.5), Question("q3"), Question("q4", 1000.0), Question("q5")
    ]


def test_jsonl_training_format_is_accepted(tmp_path: Path) -> None:
    lines = [json.dumps({"question": "q1", "answer": 1}), "", json.dumps({"question": "q2"}), json.dumps("q3")]
    path = write(tmp_path, "q.jsonl", "\n".join(lines))
    assert load_questions(path) == [Question("q1", 1.0), Question("q2"), Question("q3")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("q.txt", "\n# nothing\n", "q.txt: contains no questions"),
        ("q.json", "[]", "q.json: contains no questions"),
        ("q.json", '{"question": "q"}', "q.json: expected a JSON list of questions, got dict"),
        ("q.json", '["q1", 3]', "q.json: record 1: expected a question string"),
        ("q.json", '[["q1", ["many"]]]', "q.json: record 0: answer must be a number or a non-empty text, got ['many']"),
        ("q.json", '[{"question": "  "}]', "q.json: record 0: question must be a non-empty string"),
        ("q.jsonl", '{"question": "q1"}\n{"question": "q2",\n', "q.jsonl: line 2, column 19: invalid JSON: Expecting property name"),
        ("q.jsonl", '{"text": "q1"}\n', "q.jsonl: line 1: expected a question string, a [question, answer] pair"),
        ("q.yaml", "- q1\n", "q.yaml: unknown questions format '.yaml'. Fix: use .txt (one question per line)"),
    ],
)
def test_bad_files_name_file_record_and_fix(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as info:
        load_questions(path)
    assert str(info.value).startswith(f"{tmp_path}/") and message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"questions file not found: .*nope.txt\. Fix: check the path"):
        load_questions(tmp_path / "nope.txt")
