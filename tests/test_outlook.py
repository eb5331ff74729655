"""The outlook said at the start of a budgeted run: measured results per CPU kind, and the budget that would catch up."""

from __future__ import annotations

import json
from pathlib import Path

from sft_lightning.budget.outlook import SHIPPED_RUNS, MeasuredRun, outlook_lines, read_runs

RUNS = [
    MeasuredRun("cpu-avx512bf16", 15, 900, 750, 0.90),
    MeasuredRun("cpu-avx2", 15, 270, 756, 0.45),
]


def test_a_slower_kind_is_told_what_it_reaches_and_the_budget_that_would_catch_up() -> None:
    lines = outlook_lines("cpu-avx2", 15, RUNS, "handwritten")
    assert lines[0] == "outlook (cpu-avx2): measured here, 15 min trained 270 steps, handwritten accuracy 0.45"
    # 900 steps at 2.8 s a step, plus the 144 s of setup, validation and end this budget had: 2664 s
    assert "cpu-avx512bf16 reaches 0.90 in 15 min (900 steps)" in lines[1]
    assert "BUDGET=45" in lines[1]


def test_the_best_kind_hears_only_its_own_result() -> None:
    assert outlook_lines("cpu-avx512bf16", 15, RUNS, "handwritten") == [
        "outlook (cpu-avx512bf16): measured here, 15 min trained 900 steps, handwritten accuracy 0.90"
    ]


def test_an_unmeasured_kind_or_budget() -> None:
    assert "no run measured on this CPU kind (cpu-amx)" in outlook_lines("cpu-amx", 15, RUNS, "handwritten")[0]
    assert outlook_lines("cpu-avx2", 7, RUNS, "handwritten") == []


def test_the_shipped_results_file_reads() -> None:
    path = SHIPPED_RUNS
    runs = read_runs(path, "handwritten")
    assert {run.kind for run in runs} >= {"cpu-avx2", "cpu-avx512bf16"}
    assert all(run.steps > 0 and 0 <= run.accuracy <= 1 for run in runs)


def test_read_runs_skips_runs_without_the_set(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"runs": [{"kind": "cpu", "minutes": 15, "steps": 1, "training_s": 1, "accuracy": {"val": 0.1}}]}))
    assert read_runs(path, "handwritten") == []
