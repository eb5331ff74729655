"""TimeBudget: a wall-clock budget whose learning-rate schedule completes when the time is up.

Unit tests drive the callback with a fake clock; the real-run tests train the offline tiny model
through the CLI for a few seconds of budget, interrupt and resume it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from helpers.cli import run_cli
from helpers.paths import SMOKE
from lightning.pytorch.callbacks import Callback

from sft_lightning.budget.schedule import lr_factor
from sft_lightning.budget.time_budget import BudgetError, TimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(world_size=1, should_stop=False, enable_validation=True, limit_val_batches=1.0, sanity_checking=False)


def module_estimating(seconds: float | None) -> SimpleNamespace:
    return SimpleNamespace(estimate_validation_seconds=lambda: seconds)


BATCH = {"input_ids": torch.zeros(4, 3)}


def run_steps(budget: TimeBudget, clock: FakeClock, trainer: SimpleNamespace, step_s: float, limit: int = 10_000) -> list[float]:
    """Batches of ``step_s`` seconds until the budget stops the trainer; the progress after each."""
    progress = []
    for index in range(limit):
        clock.now += step_s
        budget.on_train_batch_end(trainer, None, None, BATCH, index)
        progress.append(budget.progress)
        if trainer.should_stop:
            break
    return progress


# ------------------------------------------------------------------ the schedule


def test_lr_factor_warms_up_then_decays_to_the_floor_exactly_at_the_end() -> None:
    assert lr_factor(0.0, 0.1, 0.1) == 0.01  # the first step already moves
    assert lr_factor(0.05, 0.1, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, 0.1) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_factor(1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert lr_factor(1.7, 0.1, 0.1) == pytest.approx(0.1)
    values = [lr_factor(p / 100, 0.1, 0.1) for p in range(10, 101)]
    assert values == sorted(values, reverse=True)


# ------------------------------------------------------------------ the plan, with a fake clock


def test_budget_reserves_validation_and_end_and_stops_on_time() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    budget = TimeBudget(minutes=10, end_seconds=20, validation_safety=1.5, clock=clock)
    clock.now += 30  # setup: data, model
    budget.on_train_start(trainer, module_estimating(40.0))
    assert budget.validation_reserve_s == 60.0
    clock.now += 25  # the first step compiles: not schedule time
    budget.on_train_batch_end(trainer, None, None, BATCH, 0)
    assert budget.progress == 0.0
    progress = run_steps(budget, clock, trainer, step_s=0.5)
    assert trainer.should_stop and budget.stopped_by_budget
    assert progress == sorted(progress) and progress[-1] == 1.0
    # 600 s - 30 setup - 25 first step - 60 validation - 20 end = 465 s of 0.5 s steps
    assert budget.steps == 1 + 930
    assert budget.examples == 4 * budget.steps
    assert budget.used() == pytest.approx(600 - 60 - 20)
    assert budget.phases["setup"] == pytest.approx(30) and budget.phases["first_step"] == pytest.approx(25)


def test_a_faster_machine_takes_more_steps_and_both_finish_the_schedule() -> None:
    steps = {}
    for step_s in (0.2, 0.46):
        clock, trainer = FakeClock(), fake_trainer()
        budget = TimeBudget(minutes=5, end_seconds=0, clock=clock)
        budget.on_train_start(trainer, module_estimating(10.0))
        progress = run_steps(budget, clock, trainer, step_s)
        assert progress[-1] == 1.0 and progress[-2] < 1.0
        steps[step_s] = budget.steps
    assert steps[0.2] > 2 * steps[0.46]


def test_validations_during_training_are_measured_and_taken_out_of_training_time() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    budget = TimeBudget(minutes=10, end_seconds=0, validation_safety=1.0, clock=clock)
    budget.on_train_start(trainer, module_estimating(30.0))
    run_steps(budget, clock, trainer, step_s=1.0, limit=100)
    before = budget.remaining_training()
    budget.on_validation_start(trainer, None)
    clock.now += 50.0  # a slower validation than the probe said
    budget.on_validation_end(trainer, None)
    assert budget.phases["validation"] == 50.0
    assert budget.validation_reserve_s == 50.0  # the final one is now planned at the measured time
    assert budget.remaining_training() == pytest.approx(before - 50.0 - 20.0)
    run_steps(budget, clock, trainer, step_s=1.0)
    assert budget.used() == pytest.approx(600 - 50.0, abs=1.0)


def test_without_an_estimate_a_share_of_the_budget_is_reserved() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    budget = TimeBudget(minutes=10, validation_share=0.25, clock=clock)
    budget.on_train_start(trainer, SimpleNamespace())
    assert budget.validation_reserve_s == 150.0
    trainer.enable_validation = False
    budget.on_train_start(trainer, SimpleNamespace())
    assert budget.validation_reserve_s == 0.0


def test_no_time_left_to_train_is_a_clear_error() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    budget = TimeBudget(minutes=1, clock=clock)
    clock.now += 45
    with pytest.raises(BudgetError, match=r"leaves no time to train: 45 s are used before the first step.*Fix: raise --budget.minutes"):
        budget.on_train_start(trainer, module_estimating(20.0))


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), float("inf")])
def test_budget_must_be_positive(minutes: float) -> None:
    with pytest.raises(BudgetError, match=r"budget.minutes must be a positive number"):
        TimeBudget(minutes=minutes)


def test_without_minutes_the_budget_does_nothing() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    budget = TimeBudget(clock=clock)
    budget.on_train_start(trainer, module_estimating(1e9))  # would be "no time to train" if active
    run_steps(budget, clock, trainer, step_s=100.0, limit=50)
    assert not trainer.should_stop and budget.steps == 0 and budget.state_dict() == {}


def test_state_dict_continues_the_budget_in_a_new_process() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    first = TimeBudget(minutes=10, end_seconds=0, clock=clock)
    clock.now += 20
    first.on_train_start(trainer, module_estimating(10.0))
    run_steps(first, clock, trainer, step_s=1.0, limit=200)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    progress_at_save = first.progress

    clock2 = FakeClock()
    second = TimeBudget(minutes=10, end_seconds=0, clock=clock2)
    second.load_state_dict(state)
    clock2.now += 20  # the new process sets up again
    second.on_train_start(trainer, module_estimating(10.0))
    assert second.used() == pytest.approx(state["used_s"] + 20)
    assert second.steps == 200
    run_steps(second, clock2, trainer, step_s=1.0, limit=2)
    assert second.progress > progress_at_save
    trainer.should_stop = False
    run_steps(second, clock2, trainer, step_s=1.0)
    assert second.used() == pytest.approx(600 - 11.0, abs=1.0)  # 11 s = the 1.1 x 10 s validation reserve


# ------------------------------------------------------------------ real runs (tiny model)


BUDGET_ARGS = (
    "--trainer.max_steps", "-1",
    "--trainer.max_epochs", "-1",
    "--trainer.check_val_every_n_epoch", "null",
    "--trainer.val_check_interval", "1000000",
    "--data.train_size", "2000",
    "--data.unseen_val_size", "8",
)


def budget_args(minutes: float) -> tuple[str, ...]:
    return ("--budget.minutes", str(minutes), "--budget.end_seconds", "2")


def logged(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.mark.slow
def test_fit_ends_within_its_budget_with_the_schedule_complete(tmp_path: Path) -> None:
    result = run_cli("fit", "--config", SMOKE, *BUDGET_ARGS, *budget_args(0.4), "--trainer.log_every_n_steps", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "ended by the budget" in out, out[-2000:]
    used = float(out.split("used ")[1].split(" min")[0])
    assert 0.25 <= used <= 0.4, out[-2000:]
    steps = int(out.split("\nsteps")[1].split()[0])
    assert steps > 20
    run_dir = tmp_path / "runs" / "smoke" / "version_0"
    lrs = logged(run_dir, "lr")
    # warm-up, then decay to min_lr_ratio (0.1) x 0.003 when the time is up
    assert max(lrs) == pytest.approx(0.003, rel=0.05)
    assert lrs[-1] == pytest.approx(0.0003, rel=0.15)
    assert logged(run_dir, "val_unseen/accuracy") and logged(run_dir, "val/accuracy")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == steps  # last.ckpt holds the final step, like the adapter


@pytest.mark.slow
def test_an_interrupted_budget_run_resumes_with_the_time_left(tmp_path: Path) -> None:
    stop = {"class_path": "helpers.faults.SignalAt", "init_args": {"signum": int(signal.SIGTERM), "step": 30}}
    first = run_cli("fit", "--config", SMOKE, *BUDGET_ARGS, *budget_args(0.5), f"--trainer.callbacks+={json.dumps(stop)}", cwd=tmp_path)
    assert first.returncode == 143, first.stderr[-3000:]
    ckpt = torch.load(tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("TimeBudget"))
    # the signal lands inside step 31 (SignalAt fires before its optimizer step), which completes first
    assert state["steps"] == ckpt["global_step"] == 31 and 0 < state["used_s"] < 30
    second = run_cli("fit", "--config", SMOKE, *BUDGET_ARGS, *budget_args(0.5), "--ckpt_path", "last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout
    assert "ended by the budget" in out
    used = float(out.split("used ")[1].split(" min")[0])
    assert used <= 0.5, out[-1500:]
    assert int(out.split("\nsteps")[1].split()[0]) > 30  # counted on from the checkpoint


class SignalInFinalValidation(Callback):
    """Test-only: SIGTERM from inside the final validation (the budget has stopped training), then busy."""

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.should_stop and trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)


def lora_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in ckpt["state_dict"].items() if "lora_" in name}


@pytest.mark.slow
def test_a_run_stopped_in_its_final_validation_resumes_to_the_same_adapter_and_validates(tmp_path: Path) -> None:
    """The schedule was complete when the signal came: the resumed fit trains no step, runs the final
    validation it owes and exports the weights of the step the budget ended on."""
    stop = {"class_path": "test_budget.SignalInFinalValidation"}
    first = run_cli("fit", "--config", SMOKE, *BUDGET_ARGS, *budget_args(0.3), f"--trainer.callbacks+={json.dumps(stop)}", cwd=tmp_path)
    assert first.returncode == 143, first.stderr[-3000:]
    runs = tmp_path / "runs" / "smoke"
    cut = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert next(v for k, v in cut["callbacks"].items() if k.startswith("TimeBudget"))["progress"] >= 1.0

    second = run_cli("fit", "--config", SMOKE, *BUDGET_ARGS, *budget_args(0.3), "--ckpt_path", "last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"ended its training at step {cut['global_step']} before it was interrupted; no step is trained again" in second.stderr
    summary = second.stdout.split("==== sft-lightning fit summary ====")[1]
    assert "val/accuracy" in summary and "val_unseen/accuracy" in summary and "ended by the budget" in summary
    resumed = torch.load(runs / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == cut["global_step"]
    weights, expected = lora_state(resumed), lora_state(cut)
    assert weights and weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)
    assert (runs / "version_1" / "adapter" / "adapter_model.safetensors").exists()


def test_a_tight_budget_validates_on_fewer_generated_questions_and_says_so(tmp_path: Path) -> None:
    """validation_max_share so small that nothing fits: the generated sets go down to 100 each, not below,
    the summary prints each accuracy with its interval over the questions really asked."""
    args = (
        *BUDGET_ARGS, *budget_args(0.5), "--budget.validation_max_share", "0.001",
        "--data.val_size", "150", "--data.unseen_val_size", "120", "--model.max_new_tokens", "4",
    )  # fmt: skip
    result = run_cli("fit", "--config", SMOKE, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation: val 150 -> 100, val_unseen 120 -> 100 questions" in result.stderr
    summary = result.stdout.split("==== sft-lightning fit summary ====")[1]
    assert "(95% CI " in summary and "100 questions" in summary
    assert "150 questions" not in summary and "120 questions" not in summary


def run_batches(budget: TimeBudget, clock: FakeClock, trainer: SimpleNamespace, module: SimpleNamespace) -> None:
    """1-second batches, with their start hooks, until the budget stops the trainer."""
    for index in range(10_000):
        budget.on_train_batch_start(trainer, module, BATCH, index)
        clock.now += 1.0
        budget.on_train_batch_end(trainer, module, None, BATCH, index)
        if trainer.should_stop:
            break


def test_the_final_validation_is_timed_again_near_the_end() -> None:
    """The machine slowed down during the run: the second timing (at 90% of the schedule) moves the reserve,
    and the run ends so that the slower validation still fits; the timing itself counts as validation."""
    clock, trainer = FakeClock(), fake_trainer()
    estimates = iter([10.0, 40.0])

    def estimate(max_seconds: float | None = None) -> float:
        clock.now += 5  # timing takes time
        return next(estimates)

    module = SimpleNamespace(estimate_validation_seconds=estimate)
    budget = TimeBudget(minutes=10, end_seconds=0, clock=clock)
    budget.on_train_start(trainer, module)
    assert budget.validation_reserve_s == pytest.approx(11.0)
    run_batches(budget, clock, trainer, module)
    assert budget.validation_reserve_s == pytest.approx(44.0)
    assert budget.phases["validation"] == pytest.approx(5.0)  # the second timing
    assert budget.used() == pytest.approx(600 - 44, abs=1.0)


def test_the_validation_share_caps_the_timing_too() -> None:
    """At the re-estimate the cap left for the final validation is the share minus what this timing costs (as
    much as the first timing did), so that all of validation stays within the share."""
    clock, trainer = FakeClock(), fake_trainer()
    limits: list[float | None] = []

    def estimate(max_seconds: float | None = None) -> float:
        limits.append(max_seconds)
        clock.now += 5
        return 10.0

    module = SimpleNamespace(estimate_validation_seconds=estimate)
    budget = TimeBudget(minutes=10, end_seconds=0, validation_safety=1.0, clock=clock)  # share 0.15: 90 s
    budget.on_train_start(trainer, module)
    run_batches(budget, clock, trainer, module)
    assert limits == [pytest.approx(90.0), pytest.approx(90.0 - 5)]


def test_a_lower_second_timing_moves_the_reserve_halfway() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    estimates = iter([40.0, 10.0])
    module = SimpleNamespace(estimate_validation_seconds=lambda max_seconds=None: next(estimates))
    budget = TimeBudget(minutes=10, end_seconds=0, clock=clock)
    budget.on_train_start(trainer, module)
    run_batches(budget, clock, trainer, module)
    assert budget.validation_reserve_s == pytest.approx((44.0 + 11.0) / 2)
    assert next(estimates, None) is None  # the second timing did run


def test_reestimate_can_be_turned_off() -> None:
    clock, trainer = FakeClock(), fake_trainer()
    calls = []
    module = SimpleNamespace(estimate_validation_seconds=lambda: calls.append(1) or 10.0)
    budget = TimeBudget(minutes=10, end_seconds=0, reestimate_at=None, clock=clock)
    budget.on_train_start(trainer, module)
    run_batches(budget, clock, trainer, module)
    assert calls == [1]
