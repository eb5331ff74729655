"""Report: the one line a user reads (what, where it started, what was done, the report, the fix) and
``grad_health_report.json`` - where it goes, what it holds, how it is written (tiny models trained for real, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers.toy_models import ToyLM, lm_loader
from lightning.pytorch.loggers import CSVLogger

from callbacks import GradientHealth
from callbacks.gradient_health import decide as dx
from callbacks.gradient_health import report as rp
from callbacks.gradient_health.report import REPORT_FILE

from ._harness import FAULT_STEP, MAX_STEPS, fit, make_trainer, read_report

pytestmark = pytest.mark.usefixtures("quiet_training")


# ================================================================================================ the one line
def test_message_of_a_skip_without_replay_is_exact(tmp_path: Path) -> None:
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), ToyLM(), lm_loader(MAX_STEPS, empty_at=(FAULT_STEP,))) is None
    path = tmp_path / REPORT_FILE
    assert cb.trips[0]["message"] == (
        f"GradientHealth: {dx.D_EMPTY_BATCH} at global step {FAULT_STEP} (epoch 0, batch {FAULT_STEP}) -> skip."
        f" Report: {path}. Fix: every batch needs at least one label != ignore_index; check prompt masking and truncation"
    )
    assert read_report(tmp_path)["trips"][0]["message"] == cb.trips[0]["message"]


def test_message_of_an_abort_is_the_error_and_suggests_rollback(tmp_path: Path) -> None:
    cb = GradientHealth(report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb), ToyLM(fault="nan_param", fault_steps=(FAULT_STEP,)), lm_loader(MAX_STEPS))
    assert err is not None
    assert str(err) == cb.trips[0]["message"] == (
        f"GradientHealth: {dx.D_PARAMS_BEFORE} at global step {FAULT_STEP} (epoch 0, batch {FAULT_STEP}) -> abort."
        f" Report: {tmp_path / REPORT_FILE}. Fix: the weights were already broken: resume from the last good"
        " checkpoint, or use on_nonfinite='rollback'"
    )


def test_message_quotes_the_replay_and_its_fix(tmp_path: Path) -> None:
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), ToyLM(fault="nan_loss", fault_steps=(FAULT_STEP,)), lm_loader(MAX_STEPS)) is None
    message = cb.trips[0]["message"]
    assert message.startswith(
        f"GradientHealth: {dx.D_LOSS_NAN} at global step {FAULT_STEP} (epoch 0, batch {FAULT_STEP}) -> skip;"
        " first non-finite: the loss in training_step (every module output finite, max |output| "
    )
    assert message.endswith(
        f"). Report: {tmp_path / REPORT_FILE}. Fix: every module output is finite: look at the loss code in"
        " training_step (log(0), 0/0, empty means)"
    )


def test_every_diagnosis_comes_with_a_fix() -> None:
    for line in (dx.D_PARAMS_BEFORE, dx.D_PARAMS_AFTER, dx.D_EMPTY_BATCH, dx.D_LOSS_NAN, dx.D_LOSS_INF,
                 dx.D_GRAD_OVERFLOW, dx.D_GRAD_NAN, dx.scale_collapse(65536, 1e-4, 18)):
        assert rp.advice(line) != "see the report", line


def test_rollback_is_suggested_only_to_runs_that_do_not_roll_back() -> None:
    for line in (dx.D_PARAMS_BEFORE, dx.D_PARAMS_AFTER):
        assert rp.advice(line, "abort").endswith("or use on_nonfinite='rollback'")
        assert rp.advice(line, "skip").endswith("or use on_nonfinite='rollback'")
        assert "rollback" not in rp.advice(line, "rollback")
    assert "rollback" not in rp.advice(dx.D_LOSS_NAN, "abort")


# =================================================================================================== the file
def test_default_report_dir_is_the_run_directory(tmp_path: Path) -> None:
    cb = GradientHealth()
    trainer = make_trainer(tmp_path, cb, logger=CSVLogger(str(tmp_path), name="run"))
    err = fit(trainer, ToyLM(fault="nan_loss", fault_steps=(1,)), lm_loader(MAX_STEPS))
    assert err is not None
    report = Path(trainer.log_dir) / "grad_health_report.json"  # type: ignore[arg-type]
    assert report.is_file() and str(report) == err.report_path
    trip = json.loads(report.read_text())["trips"][0]
    for key in ("global_step", "epoch", "batch_idx", "loss", "learning_rate", "loss_scale_history",
                "nonfinite_grad_params", "grad_norm_history", "diagnosis", "message"):
        assert key in trip
    assert trip["loss"] == "nan" and trip["learning_rate"] == [0.05]
    assert [s for s, _ in trip["grad_norm_history"]] == [0, 1]


def test_report_file_per_rank() -> None:
    assert rp.report_path("run", 0) == Path("run") / "grad_health_report.json" == Path("run") / REPORT_FILE
    assert rp.report_path("run", 3) == Path("run") / "grad_health_report.rank3.json"


def test_trips_accumulate_in_strict_json_and_an_unreadable_report_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "sub" / REPORT_FILE
    rp.append_trip(path, {"global_step": 1, "loss": math.nan, "norms": [math.inf, -math.inf, 2.0], "names": ("a",)})
    rp.append_trip(path, {"global_step": 2, "loss": 1.5})
    report = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert report == {
        "version": 1,
        "trips": [
            {"global_step": 1, "loss": "nan", "norms": ["inf", "-inf", 2.0], "names": ["a"]},
            {"global_step": 2, "loss": 1.5},
        ],
    }
    path.write_text("{ half a rep")  # a run killed mid-write by something else
    rp.append_trip(path, {"global_step": 3})
    assert json.loads(path.read_text()) == {"version": 1, "trips": [{"global_step": 3}]}
    assert sorted(p.name for p in path.parent.iterdir()) == [REPORT_FILE]  # no temporary file left behind
