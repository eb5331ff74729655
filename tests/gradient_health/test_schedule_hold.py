"""AMP bookkeeping: a step the GradScaler skipped does not advance a step-interval LR schedule when
``hold_scheduler_on_scaler_skip=True`` (Lightning issue #18828), and scaler, non-finite and spike skips are counted
apart. Real fp16 autocast with a real GradScaler on CPU (the plugin is passed explicitly: Lightning creates no
scaler on CPU), a plain Lightning model with a warm-up LambdaLR stepped every step."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers.toy_models import fp16_scaler_plugin
from lightning.pytorch.loggers import CSVLogger

from callbacks import GradientHealth
from callbacks.gradient_health.report import KEY_SCALER_SKIPPED, KEY_SCHEDULER_HELD, KEY_SKIPPED, KEY_SPIKE_SKIPPED, KEY_SPIKES

from ._plain import Plain, regression_loader

pytestmark = pytest.mark.usefixtures("quiet_training", "one_thread")

OVERFLOW_STEP = 3
STEPS = 8


def fit(tmp_path: Path, cb: GradientHealth, model: Plain, steps: int = STEPS, **scaler: Any) -> L.Trainer:
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb],
        plugins=[fp16_scaler_plugin(**scaler)], logger=CSVLogger(str(tmp_path)), log_every_n_steps=1,
    )
    trainer.fit(model, regression_loader(steps))
    return trainer


@pytest.mark.parametrize("hold", [True, False])
def test_a_scaler_skipped_step_holds_the_schedule(hold: bool, tmp_path: Path) -> None:
    model = Plain(inf_grad_at=(OVERFLOW_STEP,), warmup_steps=20)
    cb = GradientHealth(hold_scheduler_on_scaler_skip=hold, label_key=None, report_dir=str(tmp_path))
    fit(tmp_path, cb, model, init_scale=256.0, growth_interval=10_000)  # no back-off but the injected one
    assert cb.scaler_skipped_steps == 1 and cb.trips == []
    assert torch.equal(model.after[OVERFLOW_STEP], model.before[OVERFLOW_STEP])  # the scaler skipped the update
    advanced = [model.sched_epochs[b] - model.sched_epochs.get(b - 1, 0) for b in range(STEPS)]
    lr_moved = [model.lrs[s + 1] != model.lrs[s] for s in range(STEPS - 1)]
    if hold:
        # the schedule stands still across the skipped step, and only there
        assert advanced == [1 if b != OVERFLOW_STEP else 0 for b in range(STEPS)]
        assert lr_moved == [s != OVERFLOW_STEP for s in range(STEPS - 1)]
        assert model.sched_epochs[STEPS - 1] == STEPS - 1  # one behind the batches: the updates actually made
        assert cb.summary["scheduler_held_steps"] == 1
    else:
        # Lightning's own behaviour: the schedule advances on the skipped step too
        assert advanced == [1] * STEPS and all(lr_moved)
        assert cb.summary["scheduler_held_steps"] == 0


def test_scaler_nonfinite_and_spike_skips_are_counted_apart(tmp_path: Path) -> None:
    """One of each in one fp16 run: an overflow the scaler skips (step 3), a NaN loss the callback skips (step 100),
    a 1000x input the spike rule skips (step 120); each counter moves once, the schedule is held once."""
    model = Plain(inf_grad_at=(OVERFLOW_STEP,), nan_loss_at=(100,), scale_inputs_at=(120,))
    cb = GradientHealth(
        on_nonfinite="skip", on_spike="skip", hold_scheduler_on_scaler_skip=True, label_key=None,
        report_dir=str(tmp_path),
    )
    fit(tmp_path, cb, model, steps=130, init_scale=1.0, growth_interval=10_000)  # small scale: x1000 stays finite
    assert cb.summary == {
        "skipped_steps": 1, "rolled_back_steps": 0, "scaler_skipped_steps": 1, "spikes": 1, "spike_skipped_steps": 1,
        "spike_rolled_back_steps": 0, "scheduler_held_steps": 1, "skip_budget_left": 8,
    }
    assert [(t["global_step"], t["action"]) for t in cb.trips] == [(100, "skip"), (120, "skip")]
    assert cb.trips[-1]["counters"]["spike_skipped_steps"] == 1
    for step in (OVERFLOW_STEP, 100, 120):
        assert torch.equal(model.after[step], model.before[step]), step
    with open(next(tmp_path.glob("lightning_logs/version_*/metrics.csv"))) as fh:
        last = [row for row in csv.DictReader(fh) if row.get(KEY_SPIKES)][-1]
    assert {k: float(last[k]) for k in (KEY_SCALER_SKIPPED, KEY_SKIPPED, KEY_SPIKES, KEY_SPIKE_SKIPPED, KEY_SCHEDULER_HELD)} == {
        KEY_SCALER_SKIPPED: 1.0, KEY_SKIPPED: 1.0, KEY_SPIKES: 1.0, KEY_SPIKE_SKIPPED: 1.0, KEY_SCHEDULER_HELD: 1.0,
    }
