"""The task the data module's short flags describe: ``--data.train_file FILE`` is an ``OwnData``; without a file,
the generator's flags (``train_size``, ``unseen_val_size``, ``answer_format``, ``families``, ``units``,
``conventions``) make a ``UnitConversion``. With ``data.task`` set they do not apply, and a warning names each one set."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from sft_lightning.data.prompt import PromptFormat, resolve_prompt_format
from sft_lightning.errors import ConfigError
from sft_lightning.tasks.base import Task
from sft_lightning.tasks.own_data import OwnData
from sft_lightning.tasks.unit_conversion.task import UnitConversion

# The data module's task flags and their defaults (a flag left at its default does not conflict with data.task).
TASK_FLAGS: dict[str, Any] = {
    "train_file": None,
    "val_file": None,
    "train_size": 2000,
    "val_size": 200,
    "val_fraction": None,
    "unseen_val_size": 0,
    "answer_format": "worked",
    "families": None,
    "units": None,
    "conventions": None,
}


def task_from_flags(task: Task | None, allow_conflicting_answers: bool, **flags: Any) -> Task:
    """``task`` when given (the flags then do not apply: a warning names those set), else the task the flags
    describe."""
    changed = [name for name, value in flags.items() if value != TASK_FLAGS[name]]
    if task is not None:
        if changed:
            rank_zero_warn(
                f"data.task is {type(task).__name__}, so {', '.join(f'data.{name}' for name in changed)} (settings of the "
                "built-in tasks) do not apply. Fix: move a setting the task takes into data.task's init_args."
            )
        return task
    if flags["train_file"] is not None:
        return OwnData(flags["train_file"], flags["val_file"], flags["val_size"], flags["val_fraction"], allow_conflicting_answers)
    generator = {name: flags[name] for name in ("train_size", "val_size", "unseen_val_size", "answer_format", "families", "units", "conventions")}
    return UnitConversion(**generator, val_file=flags["val_file"])


def task_of_run_config(data: Mapping[str, Any] | None) -> Task:
    """The task of a run, from the ``data`` section of its saved ``config.yaml`` (``ask`` has no data module).
    Without one: the shipped unit-conversion task, as for every run written before ``data.task``."""
    data = dict(data or {})
    if isinstance(data.get("init_args"), dict):  # class_path/init_args form of the data module itself
        data = data["init_args"]
    spec = data.get("task")
    if isinstance(spec, Task):  # a data module built in Python keeps the object
        return spec
    if isinstance(spec, dict) and spec.get("class_path"):
        module_name, _, class_name = str(spec["class_path"]).rpartition(".")
        try:
            task_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"the run's data.task {spec['class_path']} cannot be imported ({exc}). "
                "Fix: run from the directory (or environment) where that task's module is importable."
            ) from None
        return task_class(**(spec.get("init_args") or {}))
    flags = {name: data.get(name, default) for name, default in TASK_FLAGS.items()}
    return task_from_flags(None, bool(data.get("allow_conflicting_answers", False)), **flags)


def prompt_style(task: Task, requested: str, tokenizer: Any, model: str) -> PromptFormat:
    """``data.prompt_format`` resolved for ``task`` and the model's tokenizer: ``auto`` keeps the bare prompt for the
    unit-conversion task (the format its budget was measured with, docs/learning.md), else the chat template."""
    if requested == "auto" and isinstance(task, UnitConversion):
        requested = "bare"
    return resolve_prompt_format(requested, tokenizer, model)


def prompt_format_of_run_config(data: Mapping[str, Any] | None) -> str:
    """``data.prompt_format`` of a run's saved ``config.yaml`` (runs written before it: ``auto``)."""
    data = dict(data or {})
    if isinstance(data.get("init_args"), dict):
        data = data["init_args"]
    return str(data.get("prompt_format") or "auto")
