"""GradientHealth end to end: the fault-injection matrix (every fault x every mode) and an unchanged callback on a
non-SFT LightningModule, on tiny models trained for real (CPU)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.toy_models import MLPClassifier, ToyLM, blobs, flat, lm_eval_loss, lm_loader, states_equal
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth
from callbacks.gradient_health import decide as dx

from ._harness import FAULT_STEP, MAX_STEPS, all_finite, fit, make_trainer, read_report

pytestmark = pytest.mark.usefixtures("quiet_training")


# ====================================================================================================== matrix
# fault -> how it is injected and what the callback must say about it
CASES: dict[str, dict[str, Any]] = {
    # provenance: (status, module, where) of the replay's answer; None where nothing is replayed (broken weights)
    "nan_loss": dict(fault="nan_loss", diagnosis=dx.D_LOSS_NAN, provenance=("loss", None, None)),
    "inf_loss": dict(fault="inf_loss", diagnosis=dx.D_LOSS_INF, provenance=("loss", None, None)),
    "nan_grad": dict(
        fault="nan_grad", diagnosis=dx.D_GRAD_NAN, provenance=("backward", "hidden", "backward: gradient of hidden.weight")
    ),
    "nan_hidden": dict(
        fault="nan_hidden", diagnosis=dx.D_LOSS_NAN, provenance=("forward", "hidden", "forward output")
    ),
    "inf_grad_scaler_transient": dict(fault="inf_grad", scaler=True, diagnosis=None),
    "persistent_overflow": dict(
        fault="inf_grad",
        steps=range(FAULT_STEP, 100),
        scaler=True,
        cb_kwargs=dict(max_consecutive_skipped=3),
        # back-offs at steps 3, 4, 5 are the scaler's business; the 4th overflow in a row (step 6) is fatal
        diagnosis="fp16 overflow: scale collapsed from 65536 to 8192 in 4 steps",
        trip_step=FAULT_STEP + 3,
        provenance=("backward", "hidden", "backward: gradient of hidden.weight"),
    ),
    "nan_param": dict(fault="nan_param", diagnosis=dx.D_PARAMS_BEFORE),
    # a write through .data leaves the version counter alone: still diagnosed as broken weights, not a NaN loss
    "nan_param_via_data": dict(fault="nan_param_via_data", diagnosis=dx.D_PARAMS_BEFORE),
    "empty_batch": dict(empty_at=(FAULT_STEP,), diagnosis=dx.D_EMPTY_BATCH),
}
MODES = ("abort", "skip", "rollback")


def expected_action(case: str, mode: str) -> str | None:
    if case == "inf_grad_scaler_transient":
        return None  # the scaler's normal back-off: counted, never a trip
    if case == "persistent_overflow":
        return "abort"  # in every mode: skipping again cannot help a collapsing scale
    if case.startswith("nan_param") and mode == "skip":
        return "abort"  # skipping cannot repair weights that are already NaN
    return mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_fault_matrix(case: str, mode: str, tmp_path: Path) -> None:
    spec = CASES[case]
    k = spec.get("trip_step", FAULT_STEP)
    model = ToyLM(fault=spec.get("fault"), fault_steps=spec.get("steps", (FAULT_STEP,)))
    cb = GradientHealth(on_nonfinite=mode, report_dir=str(tmp_path), **spec.get("cb_kwargs", {}))
    trainer = make_trainer(tmp_path, cb, scaler=spec.get("scaler", False))
    err = fit(trainer, model, lm_loader(MAX_STEPS, empty_at=spec.get("empty_at", ())))
    action = expected_action(case, mode)

    if action is None:  # transient overflow under a GradScaler
        assert err is None and cb.trips == []
        assert cb.scaler_skipped_steps == 1
        assert torch.equal(model.after[k], model.before[k])  # the scaler skipped the update itself
        assert not (tmp_path / "grad_health_report.json").exists()
        assert trainer.global_step == MAX_STEPS and all_finite(model)
        assert all(math.isfinite(v) for v in model.losses.values())
        return

    # the trip: step, action, diagnosis - in memory and in the report file
    trip = cb.trips[-1]
    assert (trip["global_step"], trip["action"], trip["diagnosis"]) == (k, action, spec["diagnosis"])
    report = read_report(tmp_path)
    assert report["trips"][-1]["global_step"] == k
    assert report["trips"][-1]["action"] == action
    assert report["trips"][-1]["diagnosis"] == spec["diagnosis"]
    assert report["trips"][-1]["batch_idx"] == k and report["trips"][-1]["epoch"] == 0
    provenance = report["trips"][-1]["provenance"]
    if spec.get("provenance") is None:
        assert provenance is None
    else:
        assert (provenance["status"], provenance["module"], provenance["where"]) == spec["provenance"]
        assert provenance["batch_idx"] == k
    if case == "nan_grad":
        assert report["trips"][-1]["nonfinite_grad_params"] == ["hidden.weight"]
    if case.startswith("nan_param"):
        assert report["trips"][-1]["nonfinite_params"] == ["hidden.weight"]

    if action == "abort":
        assert err is not None and err.global_step == k and err.diagnosis == spec["diagnosis"]
        assert err.report_path == str(tmp_path / "grad_health_report.json")
        assert trainer.global_step == k  # stopped at the faulty step, before its update
        assert k not in model.after
        if not case.startswith("nan_param"):
            assert torch.equal(flat(model), model.before[k])  # the poisoned update never reached the weights
        if case == "persistent_overflow":
            assert cb.scaler_skipped_steps == 3
            assert [s for s, _ in report["trips"][-1]["loss_scale_history"]][-4:] == [3, 4, 5, 6]
        return

    # skip / rollback: training carries on to the end with finite weights and loss
    assert err is None and len(cb.trips) == 1
    assert trainer.global_step == MAX_STEPS
    if action == "skip":
        assert (cb.skipped_steps, cb.rolled_back_steps) == (1, 0)
        # the optimiser never saw the update: AdamW with weight decay left weights and moments untouched
        assert torch.equal(model.after[k], model.before[k])
        assert states_equal(model.opt_after[k], model.opt_before[k])
    else:
        assert (cb.skipped_steps, cb.rolled_back_steps) == (0, 1)
        # restored to the last good state, moments included: the start of the faulty step (the previous step's
        # update kept), or for weights already broken the snapshot of the step before
        good = k - 1 if case.startswith("nan_param") else k
        assert trip["rollback_to_step"] == good
        assert torch.equal(model.after[k], model.before[good])
        assert states_equal(model.opt_after[k], model.opt_before[good])
    assert all(math.isfinite(v) for step, v in model.losses.items() if step != k)
    assert all_finite(model)
    assert math.isfinite(lm_eval_loss(model))


# ======================================================================================= non-SFT LightningModule
def test_unchanged_callback_on_an_mlp_classifier(tmp_path: Path) -> None:
    """Tuple batches, no labels key, classification: three epochs over data with one corrupt input row."""
    x, y = blobs(n=256, nan_rows=(80,))  # row 80 is in batch 5 of every epoch
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    model = MLPClassifier()
    cb = GradientHealth(on_nonfinite="skip")
    trainer = make_trainer(tmp_path, cb, max_epochs=3, max_steps=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fit(trainer, model, loader) is None
    assert not [w for w in caught if "GradientHealth" in str(w.message)]  # no 'labels' key is no reason to warn
    assert [(t["global_step"], t["action"], t["diagnosis"]) for t in cb.trips] == [
        (5, "skip", dx.D_LOSS_NAN),
        (21, "skip", dx.D_LOSS_NAN),
        (37, "skip", dx.D_LOSS_NAN),
    ]
    assert all_finite(model)
    clean_x, clean_y = blobs(n=256)
    with torch.no_grad():
        accuracy = (model(clean_x).argmax(-1) == clean_y).float().mean().item()
    assert accuracy > 0.9

