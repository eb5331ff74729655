"""Tests for sft_lightning.data.records: loading and validating question/answer files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sft_lightning.data.records import DataError, QARecord, holdout_split, load_records, make_record


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# valid files
# --------------------------------------------------------------------------------------------


def test_json_list_of_pairs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "train.json",
        json.dumps([["How many m in a mile?", 1609.344], ["  5 kg in lb?  ", 11], ["Zero?", 0], ["Neg?", -40.5]]),
    )
    records = load_records(path)
    assert records == [
        QARecord("How many m in a mile?", 1609.344),
        QARecord("5 kg in lb?", 11.0),
        QARecord("Zero?", 0.0),
        QARecord("Neg?", -40.5),
    ]
    assert all(isinstance(r.answer, float) for r in records)


def test_jsonl_objects_with_extra_fields_and_blank_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"question": "q1", "answer": 1.5}),
        "",
        "   ",
        json.dumps({"answer": 2, "question": " q2 ", "source": "ignored"}),
        json.dumps({"question": "q3", "answer": "-7e3"}),
    ]
    path = _write(tmp_path, "train.jsonl", "\n".join(lines) + "\n")
    assert load_records(path) == [QARecord("q1", 1.5), QARecord("q2", 2.0), QARecord("q3", -7000.0)]


def test_path_as_string_and_tilde_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "d.json", '[["q", 1]]')
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_records("~/d.json") == [QARecord("q", 1.0)]
    assert load_records(str(tmp_path / "d.json")) == [QARecord("q", 1.0)]


@pytest.mark.parametrize(("raw", "expected"), [("42", 42.0), (" 1,609.344 ", 1609.344), ("-1e-3", -0.001), ("0", 0.0)])
def test_numeric_string_answer_accepted(tmp_path: Path, raw: str, expected: float) -> None:
    path = _write(tmp_path, "d.json", json.dumps([["q", raw]]))
    assert load_records(path) == [QARecord("q", expected)]


def test_tuple_pair_accepted_by_make_record() -> None:
    assert make_record("q", 3) == QARecord("q", 3.0)


# --------------------------------------------------------------------------------------------
# errors: each names the file and the record/line
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match="data file not found") as info:
        load_records(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match="data file not found"):
        load_records(tmp_path / "dir.json")


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.json", '[\n  ["q1", 1],\n  ["q2", 2,\n]\n')
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid JSON at line ")
    assert re.search(r"line 4, column 1\b", message), message


def test_invalid_jsonl_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.jsonl", '{"question": "q", "answer": 1}\n\n{"question": "q2", "answer": }\n')
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert f"{path}: line 3, column 30: invalid JSON" in message, message


def test_json_top_level_not_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.json", '{"question": "q", "answer": 1}')
    with pytest.raises(DataError, match=r"expected a JSON list of records \(objects, or \[question, answer\] pairs\), got dict"):
        load_records(path)


@pytest.mark.parametrize(
    "bad",
    [["only question"], ["q", 1, "extra"], {"question": "q", "answer": 1}, "q=1", 5, None],
)
def test_json_non_pair_record_names_record_index(tmp_path: Path, bad: object) -> None:
    path = _write(tmp_path, "d.json", json.dumps([["ok", 1], ["ok2", 2], bad]))
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert f"{path}: record 2 is not a [question, answer] pair" in message, message


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.jsonl", '{"question": "q", "answer": 1}\n["q", 2]\n')
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: line 2: expected an object with 'question' and 'answer' fields" in str(info.value)


@pytest.mark.parametrize(
    ("obj", "missing"),
    [({"question": "q"}, "'answer'"), ({"answer": 1}, "'question'"), ({"q": "x", "a": 1}, "'question', 'answer'")],
)
def test_jsonl_missing_field_names_field_and_line(tmp_path: Path, obj: dict, missing: str) -> None:
    path = _write(tmp_path, "d.jsonl", json.dumps({"question": "q", "answer": 1}) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == (
        f"{path}: line 2: missing field {missing}. " 'Fix: each line needs {"question": ..., "answer": ...}.'
    )


@pytest.mark.parametrize("answer", ["", "  ", [1], {"v": 1}, None])
def test_non_numeric_answer_rejected(tmp_path: Path, answer: object) -> None:
    path = _write(tmp_path, "d.json", json.dumps([["q", 1], ["q2", answer]]))
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: record 1: answer must be a number" in str(info.value)


@pytest.mark.parametrize("answer", [True, False])
def test_bool_answer_rejected(tmp_path: Path, answer: bool) -> None:
    path = _write(tmp_path, "d.jsonl", json.dumps({"question": "q", "answer": answer}) + "\n")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: line 1: answer must be a number or a non-empty text, got {answer!r}" in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_literals_rejected(tmp_path: Path, literal: str) -> None:
    # Python's json module accepts these non-standard literals; the loader must not.
    path = _write(tmp_path, "d.json", f'[["q", 1], ["q2", {literal}]]')
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: record 1: answer must be finite" in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", '"nan"', '"inf"', '"-Infinity"'])
def test_jsonl_non_finite_answers_rejected(tmp_path: Path, literal: str) -> None:
    path = _write(tmp_path, "d.jsonl", '{"question": "ok", "answer": 1}\n{"question": "q", "answer": ' + literal + "}\n")
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: line 2: answer must be finite" in str(info.value)


@pytest.mark.parametrize("question", ["", "   ", 5, None, ["q"]])
def test_bad_question_rejected(tmp_path: Path, question: object) -> None:
    path = _write(tmp_path, "d.json", json.dumps([[question, 1]]))
    with pytest.raises(DataError) as info:
        load_records(path)
    assert f"{path}: record 0: question must be a non-empty string" in str(info.value)


@pytest.mark.parametrize(("name", "text"), [("d.json", "[]"), ("d.jsonl", ""), ("d.jsonl", "\n  \n\n")])
def test_empty_file_rejected(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value).startswith(f"{path}: contains no records")


@pytest.mark.parametrize("name", ["d.tsv", "d.txt", "d", "d.json.gz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, '[["q", 1]]')
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value).startswith(f"{path}: unknown data format")
    assert ".json" in str(info.value) and ".jsonl" in str(info.value)


def test_long_bad_value_is_shortened_in_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.json", json.dumps([["q", {"v": "x" * 500}]]))
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert "x" * 500 not in message
    assert "..." in message


# --------------------------------------------------------------------------------------------
# holdout_split
# --------------------------------------------------------------------------------------------


def _records(n: int) -> list[QARecord]:
    return [QARecord(f"q{i}", float(i)) for i in range(n)]


def test_holdout_split_takes_last_records_in_order() -> None:
    records = _records(10)
    train, val = holdout_split(records, 3)
    assert train == records[:7]
    assert val == records[7:]
    assert isinstance(train, list) and isinstance(val, list)
    assert holdout_split(tuple(records), 3) == (records[:7], records[7:])


def test_holdout_split_boundaries() -> None:
    records = _records(5)
    assert holdout_split(records, 4) == (records[:1], records[1:])
    assert holdout_split(records, 1) == (records[:4], records[4:])


@pytest.mark.parametrize(("n", "val_size"), [(5, 0), (5, 5), (5, 6), (5, -1), (0, 1), (1, 1)])
def test_holdout_split_invalid_sizes(n: int, val_size: int) -> None:
    with pytest.raises(DataError, match=f"cannot hold out {val_size} validation records from {n}"):
        holdout_split(_records(n), val_size)
