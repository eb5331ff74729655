"""A user's data file read into located records: JSON and JSONL by hand, CSV and Parquet with ``datasets``.

JSON and JSONL are parsed here so that a bad line is one error naming the file, line and column, not a pyarrow traceback.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sft_lightning.data.formats import DataFormat, detect_format, pair_record, row_record
from sft_lightning.data.records import DataError, QARecord, _short, read_text_file

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet"}
SUFFIXES = (".json", ".jsonl", *TABLE_SUFFIXES)


def read_located_records(path: str | Path) -> list[tuple[str, QARecord]]:
    """``(where, record)`` for every record of ``path`` (``where`` names the file and the place in it, for
    messages); the format is detected from the first row's columns and every row must fit it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}. Fix: check the path (relative paths are from the current directory).")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown data format '{path.suffix}'. Fix: use {', '.join(SUFFIXES)}.")
    if path.suffix == ".json":
        rows = _json_rows(path)
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        rows = _table_rows(path)
    return list(_records(path, rows))


def _records(path: Path, rows: Iterable[tuple[str, str, Any]]) -> Iterator[tuple[str, QARecord]]:
    """Rows to records: a .json list whose first item is a pair holds pairs only; otherwise every row is an object of
    the format detected from the first one."""
    fmt: DataFormat | None = None
    pairs: bool | None = None
    for where, origin, row in rows:
        if pairs is None:
            pairs = path.suffix == ".json" and isinstance(row, (list, tuple))
        if pairs:
            record = pair_record(row, where)
        elif isinstance(row, dict):
            fmt = fmt or detect_format(row, path)
            record = row_record(row, fmt, where)
        else:
            raise DataError(
                f"{where}: expected an object with 'question' and 'answer' fields (or those of another format), got {_short(row)}. "
                'Fix: one object a record, e.g. {"question": ..., "answer": ...}.'
            )
        yield where, QARecord(record.question, record.answer, record.target, origin, record.context)


def _json_rows(path: Path) -> Iterator[tuple[str, str, Any]]:
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. Fix: correct the file there."
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]}: a split of one name
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records (objects, or [question, answer] pairs), got {type(data).__name__}. "
            "Fix: write the records as a list, or one object per line in a .jsonl file."
        )
    for index, item in enumerate(data):
        yield f"{path}: record {index}", f"{path} item {index + 1}", item


def _jsonl_rows(path: Path) -> Iterator[tuple[str, str, Any]]:
    for lineno, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}, column {exc.colno}: invalid JSON: {exc.msg}. Fix: one JSON object per line.") from None
        yield where, f"{path} line {lineno}", item


def _table_rows(path: Path) -> Iterator[tuple[str, str, Any]]:
    """CSV or Parquet rows through the ``datasets`` loader (row N: the N-th data row, 1-based, header excluded)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError(f"{path}: reading {path.suffix} files needs the package datasets. Fix: pip install datasets.") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    # CSV cells as written (a completion "48" stays text, an empty input stays ""); its header alone is no record
    options: dict[str, Any] = {}
    if path.suffix == ".csv":
        lines = [line for line in read_text_file(path).splitlines() if line.strip()]
        if len(lines) <= 1:
            return
        header = next(csv.reader(lines[:1]))
        options = {"features": datasets.Features({name: datasets.Value("string") for name in header}), "keep_default_na": False}
    try:
        table = datasets.load_dataset(TABLE_SUFFIXES[path.suffix], data_files=str(path), split="train", keep_in_memory=True, **options)
    except Exception as exc:  # pyarrow and datasets raise many kinds; one line names the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: could not read it as {path.suffix[1:]}: {first}. Fix: check the file (a header row, one record per row).") from None
    for index, row in enumerate(table):
        yield f"{path}: row {index + 1}", f"{path} row {index + 1}", row
