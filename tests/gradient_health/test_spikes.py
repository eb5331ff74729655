"""Spikes: the rule by table (pure, no Trainer), then real tiny training of a plain Lightning model (CPU): healthy
runs raise no alarm, a 1000x input at one step is stopped / skipped / warned at exactly that step."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from callbacks import GradientHealth, NonFiniteTrainingError, TrainingSpikeError
from callbacks.gradient_health import decide as dx
from callbacks.gradient_health import spikes as sp
from callbacks.gradient_health.preflight import GradientHealthConfigError

from ._plain import Plain, regression_loader

pytestmark = pytest.mark.usefixtures("quiet_training")

SPIKE_STEP = 120  # the loss has settled: both the loss and the norm spike
STEPS = 130


# ================================================================================================ the rule, by table
def logs(values: list[float]) -> list[float]:
    return [math.log(v) for v in values]


STEADY = logs([1.0 + 0.01 * ((i * 7) % 5 - 2) for i in range(40)])  # +-2% around 1.0: sigma floored at 0.05


@pytest.mark.parametrize(
    ("value", "history", "min_history", "spike"),
    [
        (100.0, STEADY[:19], 20, False),  # not enough history yet: no decision at all
        (100.0, STEADY[:20], 20, True),
        (1.2, STEADY, 20, False),  # log 1.2 = 0.18 < 6 * 0.05 (the sigma floor)
        (1.4, STEADY, 20, True),  # log 1.4 = 0.34 > 0.3
        (0.01, STEADY, 20, False),  # downward: never a spike
        (math.nan, STEADY, 20, False),  # non-finite values belong to the NaN rules
        (math.inf, STEADY, 20, False),
        (None, STEADY, 20, False),  # no loss this step
        (0.0, STEADY, 20, False),  # no log of 0 or of a negative loss
        (-5.0, STEADY, 20, False),
    ],
)
def test_judge(value: float | None, history: list[float], min_history: int, spike: bool) -> None:
    got = sp.judge("loss", value, history, threshold=6.0, min_history=min_history)
    assert (got is not None) is spike


def test_an_earlier_spike_does_not_hide_the_next_one() -> None:
    """Mean/std over a window with one 1000x outlier would need the next spike to be far larger; median/MAD barely move."""
    rng = random.Random(0)
    history = [rng.gauss(0.0, 0.1) for _ in range(100)] + [math.log(1000.0)]
    assert sp.judge("grad_norm", 3.0, history, threshold=6.0, min_history=20) is not None
    mean = sum(history) / len(history)
    std = math.sqrt(sum((v - mean) ** 2 for v in history) / len(history))
    assert math.log(3.0) - mean < 6 * std  # what a 6-sigma mean/std rule would have missed


def test_the_diagnosis_names_value_level_and_threshold() -> None:
    spike = sp.judge("loss", 50.0, STEADY, threshold=6.0, min_history=20)
    assert spike is not None
    text = spike.diagnosis()
    assert text.startswith("loss spike: 50 is ") and "robust level 1" in text and "above the threshold 1.35" in text
    assert "spike_threshold=6" in text and sp.is_spike_diagnosis(text)
    assert not sp.is_spike_diagnosis(dx.D_LOSS_NAN)


@pytest.mark.parametrize("seed", range(5))
def test_no_alarm_on_warm_up_decay_and_noise_from_the_first_step(seed: int) -> None:
    """A loss decaying 100x from the first step, a norm rising 10x through warm-up then decaying, with 30% noise."""
    rng = random.Random(seed)
    steps = 600
    loss = [10.0 * math.exp(-t / 60) * math.exp(rng.gauss(0, 0.3)) + 0.05 for t in range(steps)]
    norm = [min(1.0, (t + 1) / 100) * 10 * math.exp(-t / 300) * math.exp(rng.gauss(0, 0.3)) + 0.1 for t in range(steps)]
    assert sp.false_alarms(loss)[0] == 0
    assert sp.false_alarms(norm)[0] == 0


def test_history_excludes_spikes_and_survives_a_state_round_trip() -> None:
    history = sp.SpikeHistory(window=32)
    for i in range(25):
        assert history.check({"loss": 1.0 + 0.01 * (i % 3), "grad_norm": 0.5}, threshold=6.0, min_history=20) == []
    spikes = history.check({"loss": 1.0, "grad_norm": 500.0}, threshold=6.0, min_history=20)
    assert [s.metric for s in spikes] == ["grad_norm"]
    assert len(history.logs["loss"]) == len(history.logs["grad_norm"]) == 25  # the spike step joined neither
    restored = sp.SpikeHistory(window=32)
    restored.load_state_dict(history.state_dict())
    assert restored.state_dict() == history.state_dict()
    restored.load_state_dict(None)  # a checkpoint from before spikes existed
    assert restored.state_dict() == {"loss": [], "grad_norm": []}


def test_warn_neither_aborts_nor_spends_the_budget() -> None:
    spike = dx.Decision(dx.Verdict.TRIP, "loss spike: ...")
    assert dx.choose_action(spike, mode="warn", recovered_trips=99, skip_budget=3, has_snapshot=False) == ("warn", None)
    assert dx.choose_action(spike, mode="skip", recovered_trips=3, skip_budget=3, has_snapshot=False)[0] == "abort"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"on_spike": "stop"}, "on_spike"),
        ({"spike_threshold": 0}, "spike_threshold"),
        ({"spike_threshold": math.inf}, "spike_threshold"),
        ({"spike_window": 1}, "spike_window"),
        ({"spike_min_history": 1}, "spike_min_history"),
        ({"spike_window": 10, "spike_min_history": 20}, "spike_min_history"),
        ({"hold_scheduler_on_scaler_skip": 1}, "hold_scheduler_on_scaler_skip"),
    ],
)
def test_invalid_spike_arguments_are_refused(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(GradientHealthConfigError, match=name):
        GradientHealth(**kwargs)


def test_new_arguments_stay_out_of_the_state_key_and_the_history_is_checkpointed() -> None:
    assert GradientHealth(on_spike="skip", spike_threshold=9.0, hold_scheduler_on_scaler_skip=True).state_key == (
        GradientHealth().state_key
    )
    cb = GradientHealth(on_spike="skip", spike_window=8, spike_min_history=4)
    cb._spikes.history.add({"loss": 2.0, "grad_norm": 3.0})
    state = cb.state_dict()
    assert state["spike_history"] == {"loss": [math.log(2.0)], "grad_norm": [math.log(3.0)]}
    resumed = GradientHealth(on_spike="skip", spike_window=8, spike_min_history=4)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    old = {k: v for k, v in state.items() if k not in ("spike_history", "spikes", "spike_skipped_steps")}
    resumed.load_state_dict(old)  # written before spikes existed: loads, history empty, counters 0
    assert resumed.state_dict()["spike_history"] == {"loss": [], "grad_norm": []} and resumed.spikes == 0


# ========================================================================================= real tiny training
def trainer(tmp_path: Path, cb: GradientHealth, steps: int = STEPS, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb], gradient_clip_val=1.0,
    )
    options.update(kwargs)
    return L.Trainer(**options)


@pytest.fixture(autouse=True)
def _seeded(one_thread: None) -> None:
    torch.manual_seed(0)


def test_a_healthy_plain_run_of_300_steps_raises_no_alarm(tmp_path: Path) -> None:
    model = Plain()
    cb = GradientHealth(on_spike="abort", label_key=None, report_dir=str(tmp_path))
    trainer(tmp_path, cb, steps=300).fit(model, regression_loader(300))
    assert cb.spikes == 0 and cb.trips == []
    assert model.losses[299] < model.losses[0] / 10  # it did learn: the loss fell from the first step on
    # the same series offline, through the same rule: nothing close to the threshold
    for series in (list(model.losses.values()), list(model.grad_norms.values())):
        alarms, judged, largest = sp.false_alarms(series)
        assert alarms == 0 and judged == 280 and largest < sp.THRESHOLD


def test_abort_stops_at_exactly_the_spike_step_and_names_the_samples(tmp_path: Path) -> None:
    model = Plain(scale_inputs_at=(SPIKE_STEP,))
    cb = GradientHealth(on_spike="abort", label_key=None, report_dir=str(tmp_path))
    with pytest.raises(TrainingSpikeError) as info:
        trainer(tmp_path, cb).fit(model, regression_loader(STEPS))
    err = info.value
    assert isinstance(err, NonFiniteTrainingError) and err.global_step == SPIKE_STEP
    assert SPIKE_STEP + 1 not in model.losses  # no later batch was run
    assert torch.equal(model.before[SPIKE_STEP], model.after[SPIKE_STEP - 1])
    message = str(err)
    assert "loss spike: " in message and "robust level" in message and "above the threshold" in message
    assert "raise spike_threshold or set on_spike=None" in message
    assert f"{model.losses[SPIKE_STEP]:.4g}" in message  # the value itself
    trip = cb.trips[-1]
    assert trip["action"] == "abort" and trip["on_nonfinite"] == "abort"
    assert trip["spike"]["loss"]["value"] == pytest.approx(model.losses[SPIKE_STEP], rel=1e-5)
    samples = trip["provenance"]["samples"]
    first_id = SPIKE_STEP * 16
    assert samples["spike_ids"] and all(first_id <= i < first_id + 16 for i in samples["spike_ids"])
    assert samples["records"][0].startswith("regression sample ") and "regression sample" in message


def test_skip_leaves_the_weights_bit_identical_and_training_goes_on(tmp_path: Path) -> None:
    model = Plain(scale_inputs_at=(SPIKE_STEP,))
    cb = GradientHealth(on_spike="skip", label_key=None, report_dir=str(tmp_path))
    fit = trainer(tmp_path, cb)
    fit.fit(model, regression_loader(STEPS))
    assert fit.global_step == STEPS
    assert torch.equal(model.after[SPIKE_STEP], model.before[SPIKE_STEP])
    assert not torch.equal(model.after[SPIKE_STEP + 1], model.before[SPIKE_STEP + 1])  # the next step updates
    assert cb.summary == {
        "skipped_steps": 0, "rolled_back_steps": 0, "scaler_skipped_steps": 0, "spikes": 1, "spike_skipped_steps": 1,
        "spike_rolled_back_steps": 0, "scheduler_held_steps": 0, "skip_budget_left": 9,
    }
    assert [t["global_step"] for t in cb.trips] == [SPIKE_STEP]


def test_rollback_restores_the_last_snapshot(tmp_path: Path) -> None:
    model = Plain(scale_inputs_at=(SPIKE_STEP,))
    cb = GradientHealth(on_spike="rollback", label_key=None, report_dir=str(tmp_path))
    trainer(tmp_path, cb).fit(model, regression_loader(STEPS))
    # the last good state: the spike step's own start (its weights were verified finite), the step before kept
    assert cb.summary["spike_rolled_back_steps"] == 1 and cb.trips[0]["rollback_to_step"] == SPIKE_STEP
    assert torch.equal(model.after[SPIKE_STEP], model.before[SPIKE_STEP])


def test_warn_warns_and_steps(tmp_path: Path) -> None:
    model = Plain(scale_inputs_at=(SPIKE_STEP,))
    cb = GradientHealth(on_spike="warn", label_key=None, report_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=f"loss spike: .* at global step {SPIKE_STEP} .*-> warn"):
        trainer(tmp_path, cb).fit(model, regression_loader(STEPS))
    assert not torch.equal(model.after[SPIKE_STEP], model.before[SPIKE_STEP])  # the update went ahead
    assert cb.spikes == 1 and cb.summary["spike_skipped_steps"] == 0 and cb.summary["skip_budget_left"] == 10


def test_off_by_default(tmp_path: Path) -> None:
    model = Plain(scale_inputs_at=(SPIKE_STEP,))
    cb = GradientHealth(label_key=None, report_dir=str(tmp_path))
    trainer(tmp_path, cb).fit(model, regression_loader(STEPS))
    assert cb.spikes == 0 and cb.trips == [] and cb.state_dict()["spike_history"] == {"loss": [], "grad_norm": []}


def test_a_resumed_run_continues_the_spike_history(tmp_path: Path) -> None:
    """Checkpoint after 30 steps, resume: a spike 2 steps after the resume is caught, which needs the 30 saved
    values (a fresh history would judge nothing before 20 more steps)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = GradientHealth(on_spike="skip", label_key=None, report_dir=str(tmp_path))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=10)
    trainer(tmp_path, first, steps=30, enable_checkpointing=True, callbacks=[first, ckpt]).fit(Plain(), regression_loader(40))
    saved = first.state_dict()["spike_history"]
    assert len(saved["grad_norm"]) == 30

    resumed = GradientHealth(on_spike="skip", label_key=None, report_dir=str(tmp_path))
    model = Plain(scale_inputs_at=(32,))
    trainer(tmp_path, resumed, steps=40).fit(model, regression_loader(40), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [(t["global_step"], t["action"]) for t in resumed.trips] == [(32, "skip")]
    assert resumed.summary["spike_skipped_steps"] == 1
