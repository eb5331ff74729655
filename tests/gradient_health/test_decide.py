"""Decide: the NaN decision and the action policy, by table (pure functions, no training loop), and the loss-scaler
rules on real fp16 runs with a GradScaler (CPU)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from helpers.toy_models import ToyLM, fp16_scaler_plugin, lm_loader

from callbacks import GradientHealth
from callbacks.gradient_health import decide as dx

from ._harness import MAX_STEPS, fit, make_trainer

pytestmark = pytest.mark.usefixtures("quiet_training")


# ================================================================================================ the decision
def tracker(consecutive: int = 0, run_start: float | None = None, history: Iterable[tuple[int, float]] = ()) -> dx.ScalerTracker:
    state = dx.ScalerTracker(consecutive=consecutive, run_start_scale=run_start)
    state.history.extend(history)
    return state


F = dx.StepFlags
TRIP = dx.Verdict.TRIP
# loss scale 1 at steps 0-2, then halved by a back-off at each of steps 3, 4, 5
BACKING_OFF = [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.5), (4, 0.25), (5, 0.125)]


@pytest.mark.parametrize(
    ("flags", "loss_scale", "state", "max_consecutive", "step", "expected"),
    [
        # no GradScaler: every non-finite value trips at once, named by its earliest cause
        (F(), None, tracker(), 3, 5, dx.HEALTHY),
        (F(loss_nan=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_LOSS_NAN)),
        (F(loss_inf=2), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_LOSS_INF)),
        (F(loss_nan=1, grad_nan=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_LOSS_NAN)),  # loss explains grads
        (F(empty_batch=1, loss_nan=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_EMPTY_BATCH)),  # 0/0 mean loss
        (F(grad_nan=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_GRAD_NAN)),
        (F(grad_inf=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_GRAD_OVERFLOW)),
        (F(grad_nan=1, grad_inf=1), None, tracker(), 3, 5, dx.Decision(TRIP, dx.D_GRAD_NAN)),
        (
            F(params_nonfinite_before=1, loss_nan=1, grad_nan=1), None, tracker(), 3, 5,
            dx.Decision(TRIP, dx.D_PARAMS_BEFORE, params_poisoned=True),  # broken weights explain everything after
        ),
        (
            F(params_nonfinite_after_prev_step=1, params_nonfinite_before=1), None, tracker(), 3, 5,
            dx.Decision(TRIP, dx.D_PARAMS_AFTER, params_poisoned=True),
        ),
        # a GradScaler: a finite-loss overflow is its business until it persists or the scale falls below the floor
        (F(), 65536.0, tracker(), 3, 5, dx.HEALTHY),
        (F(grad_inf=1), 65536.0, tracker(), 3, 5, dx.SCALER_SKIP),
        (F(grad_nan=1), 16384.0, tracker(2, 65536.0), 3, 5, dx.SCALER_SKIP),  # the 3rd in a row: still allowed
        (
            F(grad_inf=1), 8192.0, tracker(3, 65536.0), 3, 6,
            dx.Decision(TRIP, "fp16 overflow: scale collapsed from 65536 to 8192 in 4 steps", fatal=True),
        ),
        (
            F(grad_inf=1), 65536.0, tracker(), 0, 2,
            dx.Decision(TRIP, "fp16 overflow: scale collapsed from 65536 to 65536 in 1 steps", fatal=True),
        ),
        (
            F(grad_inf=1), 0.0625, tracker(3, 0.5, BACKING_OFF), 100, 6,
            dx.Decision(TRIP, "fp16 overflow: scale collapsed from 1 to 0.0625 in 4 steps", fatal=True),
        ),
        (
            F(), 0.05, tracker(), 3, 5,  # below the floor with no history: from itself, in one step
            dx.Decision(TRIP, "fp16 overflow: scale collapsed from 0.05 to 0.05 in 1 steps", fatal=True),
        ),
        (F(empty_batch=1, grad_inf=1), 65536.0, tracker(), 3, 5, dx.Decision(TRIP, dx.D_EMPTY_BATCH)),
        (F(loss_inf=1, grad_inf=1), 65536.0, tracker(), 3, 5, dx.Decision(TRIP, dx.D_LOSS_INF)),  # not the scaler's
    ],
)
def test_decide(
    flags: dx.StepFlags,
    loss_scale: float | None,
    state: dx.ScalerTracker,
    max_consecutive: int,
    step: int,
    expected: dx.Decision,
) -> None:
    before = copy.deepcopy(state)
    got = dx.decide(
        flags, step=step, loss_scale=loss_scale, tracker=state, max_consecutive_skipped=max_consecutive, min_loss_scale=0.1
    )
    assert got == expected
    assert state == before  # pure: the tracker is only written by the callback, after the decision


def test_flags_round_trip_through_the_reduced_vector() -> None:
    """The all-reduced vector holds rank counts in FLAG_NAMES order; extra entries (the norms) are ignored."""
    flags = dx.StepFlags.from_values([0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 123.4, 5.0])
    assert flags == dx.StepFlags(loss_inf=2, grad_nan=1, params_nonfinite_after_prev_step=1)
    assert list(flags.as_dict()) == list(dx.FLAG_NAMES) and flags.grads_nonfinite


# ============================================================================================== action policy
NAN_LOSS = dx.Decision(dx.Verdict.TRIP, dx.D_LOSS_NAN)
POISONED = dx.Decision(dx.Verdict.TRIP, dx.D_PARAMS_AFTER, params_poisoned=True)
COLLAPSE = dx.Decision(dx.Verdict.TRIP, dx.scale_collapse(65536, 8, 4), fatal=True)


@pytest.mark.parametrize(
    ("decision", "mode", "recovered", "snapshot", "checkpoint", "expected"),
    [
        (NAN_LOSS, "abort", 0, False, False, ("abort", None)),
        (NAN_LOSS, "skip", 0, False, False, ("skip", None)),
        (NAN_LOSS, "rollback", 0, False, False, ("rollback", None)),  # no snapshot needed: the update is dropped
        (NAN_LOSS, "skip", 3, False, False, ("abort", "skip budget of 3 exhausted")),
        (COLLAPSE, "rollback", 0, True, False, ("abort", "the loss scaler has been backing off without recovering")),
        (POISONED, "skip", 0, True, False, ("abort", "skipping cannot repair non-finite weights (use on_nonfinite='rollback')")),
        (POISONED, "rollback", 0, True, False, ("rollback", None)),
        (POISONED, "rollback", 0, False, False, ("abort", "no finite snapshot to roll back to")),
        (POISONED, "abort", 0, True, True, ("abort", "checkpoint not written")),
        (POISONED, "rollback", 0, False, True, ("abort", "no finite snapshot to roll back to; checkpoint not written")),
    ],
)
def test_choose_action(decision: dx.Decision, mode: str, recovered: int, snapshot: bool, checkpoint: bool, expected: Any) -> None:
    got = dx.choose_action(
        decision, mode=mode, recovered_trips=recovered, skip_budget=3, has_snapshot=snapshot, at_checkpoint=checkpoint
    )
    assert got == expected


def test_only_loss_and_gradient_trips_on_finite_weights_are_replayed() -> None:
    assert dx.replayable(NAN_LOSS) and dx.replayable(COLLAPSE)
    assert dx.replayable(dx.Decision(dx.Verdict.TRIP, dx.D_GRAD_NAN))
    assert not dx.replayable(POISONED)
    assert not dx.replayable(dx.Decision(dx.Verdict.TRIP, dx.D_EMPTY_BATCH))


# ============================================================================== loss-scaler rules, real runs
def test_scaler_back_off_runs_are_counted_consecutively(tmp_path: Path) -> None:
    # two runs of 2 overflows, separated by a healthy step: never more than 2 in a row, so never fatal
    model = ToyLM(fault="inf_grad", fault_steps=(2, 3, 5, 6))
    cb = GradientHealth(max_consecutive_skipped=2, report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb, scaler=True), model, lm_loader(MAX_STEPS)) is None
    assert cb.trips == [] and cb.scaler_skipped_steps == 4
    assert cb.state_dict()["loss_scale_history"][-1] == [7, 4096.0]  # 65536 halved by 4 back-offs


def test_zero_consecutive_skips_makes_every_overflow_fatal(tmp_path: Path) -> None:
    model = ToyLM(fault="inf_grad", fault_steps=(2,))
    cb = GradientHealth(max_consecutive_skipped=0, report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb, scaler=True), model, lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == 2
    assert err.diagnosis == "fp16 overflow: scale collapsed from 65536 to 65536 in 1 steps"


def test_loss_scale_floor_is_fatal(tmp_path: Path) -> None:
    model = ToyLM(fault="inf_grad", fault_steps=range(2, 100))
    cb = GradientHealth(min_loss_scale=0.1, max_consecutive_skipped=100, report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, plugins=[fp16_scaler_plugin(init_scale=1.0)])
    err = fit(trainer, model, lm_loader(MAX_STEPS))
    # scale 1 at steps 0-2, halved by each back-off: 0.5, 0.25, 0.125, then 0.0625 < 0.1 at step 6
    assert err is not None and err.global_step == 6
    assert err.diagnosis == "fp16 overflow: scale collapsed from 1 to 0.0625 in 4 steps"
