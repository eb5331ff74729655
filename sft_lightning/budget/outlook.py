"""What a budgeted run can expect on this CPU, said when training starts: what this CPU kind measured with the
same config (``make_train_runs.json`` beside this module), what the best kind reached, and the ``BUDGET`` that would
train as many steps here."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from sft_lightning.budget.time_budget import find_time_budget
from sft_lightning.models.precision import cpu_flags, cpu_kind, probe_cpu

# The measured `make train` runs, one entry per CPU kind and budget (package data, so any directory finds it).
SHIPPED_RUNS = Path(__file__).with_name("make_train_runs.json")


@dataclass(frozen=True)
class MeasuredRun:
    """One measured run of the config: where, how long, how far it got and what it scored."""

    kind: str
    minutes: float
    steps: int
    training_s: float
    accuracy: float  # on the reference set (``BudgetOutlook.set_name``)


def read_runs(path: Path, set_name: str) -> list[MeasuredRun]:
    """The runs in a results file (``{"runs": [{kind, minutes, steps, training_s, accuracy: {set: value}}]}``)."""
    rows = json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    return [
        MeasuredRun(r["kind"], float(r["minutes"]), int(r["steps"]), float(r["training_s"]), float(r["accuracy"][set_name]))
        for r in rows
        if set_name in r.get("accuracy", {})
    ]


def outlook_lines(kind: str, minutes: float, runs: list[MeasuredRun], set_name: str) -> list[str]:
    """What to say at the start of a ``minutes`` budget on a ``kind`` CPU, from ``runs`` (none: nothing)."""
    same_budget = [r for r in runs if math.isclose(r.minutes, minutes)]
    if not same_budget:
        return []
    best = max(same_budget, key=lambda r: r.accuracy)
    mine = [r for r in runs if r.kind == kind]
    if not mine:
        return [f"outlook: no run measured on this CPU kind ({kind}); {best.kind} reached {set_name} accuracy "
                f"{best.accuracy:.2f} in {minutes:g} min ({best.steps} steps)"]
    here = min(mine, key=lambda r: abs(r.minutes - minutes))
    lines = [f"outlook ({kind}): measured here, {here.minutes:g} min trained {here.steps} steps, {set_name} accuracy {here.accuracy:.2f}"]
    if best.kind != kind and best.accuracy > here.accuracy:
        seconds_per_step = here.training_s / max(here.steps, 1)
        other_s = here.minutes * 60 - here.training_s  # setup, validation and end at this budget
        needed = math.ceil((best.steps * seconds_per_step + other_s) / 60)
        lines.append(
            f"outlook: {best.kind} reaches {best.accuracy:.2f} in {minutes:g} min ({best.steps} steps); this CPU would "
            f"need about BUDGET={needed} (make train BUDGET={needed}) to train as many steps"
        )
    return lines


class BudgetOutlook(Callback):
    """Print ``outlook_lines`` for this machine when training starts (only with an active ``TimeBudget``).

    Args:
        results: the measured runs of this config (default: the shipped ``make_train_runs.json``; a missing file:
            nothing is said).
        set_name: the validation set whose accuracy is compared (the hand-written one by default).
    """

    def __init__(self, results: str | None = None, set_name: str = "handwritten") -> None:
        self.results = results
        self.set_name = set_name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        budget = find_time_budget(trainer)
        path = Path(self.results) if self.results else SHIPPED_RUNS
        if budget is None or not path.is_file():
            return
        try:
            runs = read_runs(path, self.set_name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rank_zero_info(f"outlook: {path} could not be read ({exc}); nothing to compare with")
            return
        kind = "cuda" if trainer.strategy.root_device.type == "cuda" else cpu_kind(probe_cpu(), cpu_flags())
        for line in outlook_lines(kind, budget.budget_s / 60, runs, self.set_name):
            rank_zero_info(line)

    def state_dict(self) -> dict[str, Any]:
        return {}
