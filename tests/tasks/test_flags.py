"""The data module's short flags: ``--data.conventions`` reaches the unit-conversion task, in a fit and in a saved run."""

from __future__ import annotations

from sft_lightning.tasks.flags import TASK_FLAGS, task_from_flags, task_of_run_config


def test_conventions_flag_makes_the_task_read_ton_as_short() -> None:
    task = task_from_flags(None, False, **{**TASK_FLAGS, "conventions": {"ton": "short"}})
    assert task.conventions.ton == "short"
    assert task.completion("ton to lb: 2×") == "2000=<answer>4000</answer>"


def test_a_saved_run_keeps_its_conventions() -> None:
    assert task_of_run_config({"conventions": {"ton": "short"}}).conventions.ton == "short"
    assert task_of_run_config({}).conventions.ton == "metric"
