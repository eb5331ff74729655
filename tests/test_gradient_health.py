"""GradientHealth: fault-injection matrix and behaviour tests on tiny models trained for real (CPU)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from _toy_models import (
    AttrBatches,
    MLPClassifier,
    ToyLM,
    blobs,
    flat,
    fp16_scaler_plugin,
    lm_eval_loss,
    lm_loader,
    states_equal,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth, NonFiniteTrainingError
from callbacks import _diagnosis as dx

pytestmark = pytest.mark.usefixtures("quiet_training")

FAULT_STEP = 3
MAX_STEPS = 8




def make_trainer(tmp_path: Path, cb: GradientHealth | None, *, scaler: bool = False, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        max_steps=MAX_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb] if cb is not None else [],
        plugins=[fp16_scaler_plugin()] if scaler else None,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def fit(trainer: L.Trainer, model: L.LightningModule, loader: Any) -> NonFiniteTrainingError | None:
    try:
        trainer.fit(model, loader)
    except NonFiniteTrainingError as err:
        return err
    return None


def read_report(directory: Path, rank: int = 0) -> dict[str, Any]:
    name = "grad_health_report.json" if rank == 0 else f"grad_health_report.rank{rank}.json"
    return json.loads((directory / name).read_text())


def all_finite(module: torch.nn.Module) -> bool:
    return bool(flat(module).isfinite().all())


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
        # restored to the snapshot taken at the start of the previous healthy step, moments included
        assert trip["rollback_to_step"] == k - 1
        assert torch.equal(model.after[k], model.before[k - 1])
        assert states_equal(model.opt_after[k], model.opt_before[k - 1])
    assert all(math.isfinite(v) for step, v in model.losses.items() if step != k)
    assert all_finite(model)
    assert math.isfinite(lm_eval_loss(model))


# ============================================================================================ skip exactness
@pytest.mark.parametrize("optimizer", ["sgd", "decay_everything"])
def test_skip_leaves_weights_and_optimizer_state_untouched(optimizer: str, tmp_path: Path) -> None:
    """SGD with momentum + weight decay would still move on zero grads; a third-party optimiser that decays
    every parameter ignores grad=None - both must leave weights and state exactly as before the skipped step."""
    model = ToyLM(fault="nan_grad", fault_steps=(FAULT_STEP,), optimizer=optimizer)
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS)) is None
    assert cb.skipped_steps == 1
    assert torch.equal(model.after[FAULT_STEP], model.before[FAULT_STEP])
    assert states_equal(model.opt_after[FAULT_STEP], model.opt_before[FAULT_STEP])
    # and the healthy steps around it did update
    assert not torch.equal(model.after[FAULT_STEP + 1], model.before[FAULT_STEP + 1])


def test_rollback_every_n_steps_restores_older_snapshot(tmp_path: Path) -> None:
    model = ToyLM(fault="nan_loss", fault_steps=(5,))
    cb = GradientHealth(on_nonfinite="rollback", snapshot_every_n_steps=4, report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS)) is None
    assert cb.trips[0]["rollback_to_step"] == 4  # snapshots at steps 0 and 4
    assert torch.equal(model.after[5], model.before[4])


def test_gradient_accumulation_skips_the_whole_accumulated_update(tmp_path: Path) -> None:
    # 2 micro-batches per optimiser step; both micro-batches of step 2 (batches 4 and 5) return NaN
    model = ToyLM(fault="nan_loss", fault_steps=(2,))
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, accumulate_grad_batches=2, max_steps=4)
    assert fit(trainer, model, lm_loader(MAX_STEPS)) is None
    assert [(t["global_step"], t["batch_idx"], t["diagnosis"]) for t in cb.trips] == [(2, 5, dx.D_LOSS_NAN)]
    assert torch.equal(model.after[5], model.before[4])
    assert trainer.global_step == 4 and all_finite(model)


def test_report_loss_is_unscaled_and_unnormalised(tmp_path: Path) -> None:
    # empty batch under a GradScaler with accumulation: the reported loss is the training_step loss
    model = ToyLM(loss_norm="fixed")
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, scaler=True, accumulate_grad_batches=2, max_steps=3)
    assert fit(trainer, model, lm_loader(MAX_STEPS, empty_at=(3,))) is None
    trip = cb.trips[0]
    assert (trip["global_step"], trip["diagnosis"], trip["loss_scale"]) == (1, dx.D_EMPTY_BATCH, 65536.0)
    assert trip["loss"] == pytest.approx((model.losses[2] + model.losses[3]) / 2, rel=1e-3)


def test_skip_budget_exhausted_aborts(tmp_path: Path) -> None:
    model = ToyLM(fault="nan_loss", fault_steps=(2, 4))
    cb = GradientHealth(on_nonfinite="skip", skip_budget=1, report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == 4
    assert [(t["global_step"], t["action"]) for t in cb.trips] == [(2, "skip"), (4, "abort")]
    assert cb.trips[-1]["abort_reason"] == "skip budget of 1 exhausted"
    assert [t["action"] for t in read_report(tmp_path)["trips"]] == ["skip", "abort"]


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


def test_attribute_access_batch_with_no_supervised_tokens(tmp_path: Path) -> None:
    model = ToyLM()
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    loader = DataLoader(AttrBatches(MAX_STEPS, empty_at=(FAULT_STEP,)), batch_size=None)
    assert fit(make_trainer(tmp_path, cb), model, loader) is None
    assert [(t["global_step"], t["diagnosis"]) for t in cb.trips] == [(FAULT_STEP, dx.D_EMPTY_BATCH)]


def test_empty_batch_detected_even_when_loss_stays_finite(tmp_path: Path) -> None:
    # a sum-normalised loss is 0 (finite) on a batch without targets; the label check still catches it
    model = ToyLM(loss_norm="fixed")
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS, empty_at=(FAULT_STEP,))) is None
    assert model.losses[FAULT_STEP] == 0.0
    assert [(t["global_step"], t["diagnosis"]) for t in cb.trips] == [(FAULT_STEP, dx.D_EMPTY_BATCH)]
    assert torch.equal(model.after[FAULT_STEP], model.before[FAULT_STEP])


def test_label_check_can_be_disabled(tmp_path: Path) -> None:
    model = ToyLM(loss_norm="fixed")
    cb = GradientHealth(label_key=None, report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS, empty_at=(FAULT_STEP,))) is None
    assert cb.trips == []


# ================================================================== weights that go non-finite in the update
def test_params_nonfinite_after_update_detected_at_next_step(tmp_path: Path) -> None:
    model = ToyLM(nan_lr_at=FAULT_STEP)  # finite loss and grads, NaN learning rate -> NaN weights
    cb = GradientHealth(report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == FAULT_STEP + 1
    assert err.diagnosis == dx.D_PARAMS_AFTER


def test_params_nonfinite_after_last_update_detected_at_train_end(tmp_path: Path) -> None:
    model = ToyLM(nan_lr_at=MAX_STEPS - 1)
    cb = GradientHealth(report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS))
    assert err is not None and err.diagnosis == dx.D_PARAMS_AFTER
    assert cb.trips[-1]["detected_at"] == "train_end"


def test_rollback_repairs_params_nonfinite_after_last_update(tmp_path: Path) -> None:
    model = ToyLM(nan_lr_at=MAX_STEPS - 1)
    cb = GradientHealth(on_nonfinite="rollback", report_dir=str(tmp_path))
    assert fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS)) is None
    assert cb.rolled_back_steps == 1 and all_finite(model)
    assert torch.equal(flat(model), model.before[MAX_STEPS - 1])


# ============================================================================== never a poisoned checkpoint
def _ckpt_weights_finite(path: Path) -> bool:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return all(bool(v.isfinite().all()) for v in ckpt["state_dict"].values() if v.is_floating_point())


def _checkpointing(tmp_path: Path, **kwargs: Any) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1, save_last=True, **kwargs
    )


def test_abort_on_nan_param_writes_no_poisoned_checkpoint(tmp_path: Path) -> None:
    model = ToyLM(fault="nan_param", fault_steps=(FAULT_STEP,))
    cb = GradientHealth(report_dir=str(tmp_path))
    ckpt = _checkpointing(tmp_path, save_on_exception=True)
    trainer = make_trainer(tmp_path, cb, enable_checkpointing=True, callbacks=[cb, ckpt])
    err = fit(trainer, model, lm_loader(MAX_STEPS))
    assert err is not None and err.diagnosis == dx.D_PARAMS_BEFORE
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert files and all(_ckpt_weights_finite(f) for f in files)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == FAULT_STEP  # the last good one (after step 2), intact


@pytest.mark.parametrize("weights_only", [False, True])
def test_checkpoint_guard_refuses_nonfinite_weights(weights_only: bool, tmp_path: Path) -> None:
    # the update of step 3 makes the weights NaN; ModelCheckpoint wants to save right after it
    model = ToyLM(nan_lr_at=FAULT_STEP)
    cb = GradientHealth(report_dir=str(tmp_path))
    ckpt = _checkpointing(tmp_path, save_weights_only=weights_only, save_on_exception=True)
    trainer = make_trainer(tmp_path, cb, enable_checkpointing=True, callbacks=[cb, ckpt])
    err = fit(trainer, model, lm_loader(MAX_STEPS))
    assert err is not None and err.diagnosis == dx.D_PARAMS_AFTER
    assert cb.trips[-1]["detected_at"] == "checkpoint"
    assert "checkpoint not written" in cb.trips[-1]["abort_reason"]
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert all(_ckpt_weights_finite(f) for f in files)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == FAULT_STEP  # written after step 2; never overwritten


def test_rollback_at_checkpoint_saves_restored_weights(tmp_path: Path) -> None:
    model = ToyLM(nan_lr_at=FAULT_STEP)
    cb = GradientHealth(on_nonfinite="rollback", report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, enable_checkpointing=True, callbacks=[cb, _checkpointing(tmp_path)])
    assert fit(trainer, model, lm_loader(MAX_STEPS)) is None
    assert cb.rolled_back_steps == 1 and cb.trips[0]["detected_at"] == "checkpoint"
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == MAX_STEPS + 1 and all(_ckpt_weights_finite(f) for f in files)
    assert all_finite(model) and math.isfinite(lm_eval_loss(model))


# ==================================================================================================== resume
def test_counters_survive_checkpoint_resume(tmp_path: Path) -> None:
    cb1 = GradientHealth(on_nonfinite="skip", skip_budget=1, report_dir=str(tmp_path))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=1)
    trainer = make_trainer(tmp_path, cb1, max_steps=4, enable_checkpointing=True, callbacks=[cb1, ckpt])
    assert fit(trainer, ToyLM(fault="nan_loss", fault_steps=(1,)), lm_loader(MAX_STEPS)) is None
    assert cb1.state_dict()["skipped_steps"] == 1

    # a fresh callback in a fresh trainer: the budget of 1 was spent before the checkpoint, so the next trip aborts
    cb2 = GradientHealth(on_nonfinite="skip", skip_budget=1, report_dir=str(tmp_path))
    trainer2 = make_trainer(tmp_path, cb2, max_steps=MAX_STEPS)
    err = None
    try:
        trainer2.fit(ToyLM(fault="nan_loss", fault_steps=(6,)), lm_loader(MAX_STEPS), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    except NonFiniteTrainingError as e:
        err = e
    assert cb2.skipped_steps == 1
    assert err is not None and err.global_step == 6 and "skip budget of 1 exhausted" in str(err)
    assert [t["action"] for t in read_report(tmp_path)["trips"]] == ["skip", "abort"]


# =================================================================================================== logging
def _csv_rows(trainer: L.Trainer) -> list[dict[str, str]]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"  # type: ignore[union-attr]
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_logs_max_pre_clip_norm_over_interval_and_topk_modules(tmp_path: Path) -> None:
    model = ToyLM(fault="loss_spike", fault_steps=(5,))  # a big but finite gradient between log points
    cb = GradientHealth(log_per_module_topk=2)
    trainer = make_trainer(
        tmp_path, cb, logger=CSVLogger(str(tmp_path)), log_every_n_steps=4, gradient_clip_val=0.01, max_steps=12
    )
    assert fit(trainer, model, lm_loader(12)) is None
    rows = [r for r in _csv_rows(trainer) if r.get("grad_health/grad_norm")]
    assert [int(r["step"]) for r in rows] == [3, 7, 11]
    for row, interval in zip(rows, ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])):
        expected = max(model.grad_norms[s] for s in interval)  # pre-clip: clipping to 0.01 happens later
        assert float(row["grad_health/grad_norm"]) == pytest.approx(expected, rel=1e-5)
        assert float(row["grad_health/skipped_steps"]) == 0.0
        assert float(row["grad_health/rolled_back_steps"]) == 0.0
        modules = {k[len("grad_health/grad_norm/") :]: float(v) for k, v in row.items() if k.startswith("grad_health/grad_norm/") and v}
        per_module = {m: max(model.module_grad_norms[s][m] for s in interval) for m in ("embed", "hidden", "head")}
        top2 = sorted(per_module, key=per_module.get, reverse=True)[:2]  # type: ignore[arg-type]
        assert sorted(modules) == sorted(top2)
        for m in top2:
            assert modules[m] == pytest.approx(per_module[m], rel=1e-5)
    assert model.grad_norms[5] == max(model.grad_norms.values())  # the spike is the one that was logged
    assert "grad_health/loss_scale" not in rows[0]


def test_logs_loss_scale_and_scaler_skips_under_grad_scaler(tmp_path: Path) -> None:
    model = ToyLM(fault="inf_grad", fault_steps=(2,))
    cb = GradientHealth(on_nonfinite="skip")
    trainer = make_trainer(tmp_path, cb, scaler=True, logger=CSVLogger(str(tmp_path)), log_every_n_steps=4)
    assert fit(trainer, model, lm_loader(MAX_STEPS)) is None
    rows = [r for r in _csv_rows(trainer) if r.get("grad_health/grad_norm")]
    assert [(int(r["step"]), float(r["grad_health/loss_scale"]), float(r["grad_health/scaler_skipped_steps"])) for r in rows] == [
        (3, 32768.0, 1.0),
        (7, 32768.0, 1.0),
    ]
    # the skipped step's inf norm is counted, not logged as the interval max
    assert float(rows[0]["grad_health/grad_norm"]) == pytest.approx(max(model.grad_norms[s] for s in (0, 1, 3)), rel=1e-4)


def test_one_host_sync_per_optimizer_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every device->host transfer the callback makes during training is counted: one per optimiser step."""
    counts: Counter[str] = Counter()
    inside = [False]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            if inside[0]:
                counts[_name] += 1
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)

    cb = GradientHealth(log_per_module_topk=2, on_nonfinite="rollback")
    for hook in ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end"):
        original_hook = getattr(cb, hook)

        def wrapped(*args: Any, _hook: Any = original_hook, **kw: Any) -> Any:
            inside[0] = True
            try:
                return _hook(*args, **kw)
            finally:
                inside[0] = False

        setattr(cb, hook, wrapped)
    trainer = make_trainer(tmp_path, cb, logger=CSVLogger(str(tmp_path)), log_every_n_steps=2)
    assert fit(trainer, ToyLM(), lm_loader(MAX_STEPS)) is None
    # one read per step, plus one on the first batch (the preflight "no supervised tokens" warning)
    assert counts == Counter({"tolist": MAX_STEPS, "__bool__": 1})


def test_two_weight_passes_per_healthy_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The weights are read before each step (catches writes from outside the optimiser) and after each update
    (catches the update itself); the gradients once. No version-counter shortcut: it saved ~0.4% of a step."""
    import callbacks.gradient_health as gh

    passes: Counter[str] = Counter()
    original = gh.per_tensor_norms

    def counting(tensors: Any, out_device: torch.device) -> Any:
        kind = "weights" if tensors and isinstance(tensors[0], torch.nn.Parameter) else "grads"
        passes[kind] += 1
        return original(tensors, out_device)

    monkeypatch.setattr(gh, "per_tensor_norms", counting)
    cb = GradientHealth()
    assert fit(make_trainer(tmp_path, cb), ToyLM(), lm_loader(MAX_STEPS)) is None
    assert passes == Counter({"grads": MAX_STEPS, "weights": 2 * MAX_STEPS})


# ===================================================================================== setup and arguments
def test_setup_warns_fp16_without_scaler_and_non_fp32_trainable_params(tmp_path: Path) -> None:
    # "16-true" runs fp16 weights with no GradScaler: both warnings apply, and a NaN gradient is fatal at once
    model = ToyLM(fault="nan_grad", fault_steps=(1,), optimizer="sgd")
    cb = GradientHealth(report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, precision="16-true", max_steps=4)
    with pytest.warns(UserWarning) as record:
        err = fit(trainer, model, lm_loader(4))
    messages = [str(w.message) for w in record]
    assert any("precision='16-true' runs without a GradScaler" in m for m in messages)
    assert any("trainable parameters are not fp32 (5 x float16)" in m for m in messages)
    assert err is not None and err.global_step == 1 and err.diagnosis == dx.D_GRAD_NAN


def test_pure_fp16_adamw_weights_go_nan_in_the_update(tmp_path: Path) -> None:
    """Real failure, no injection: AdamW's eps=1e-8 underflows to 0 in fp16, so parameters without gradient
    signal get 0/0 = NaN in the first update. Loss and grads were finite; the weights were not afterwards."""
    cb = GradientHealth(report_dir=str(tmp_path), warn_on_setup=False)
    err = fit(make_trainer(tmp_path, cb, precision="16-true"), ToyLM(), lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == 1 and err.diagnosis == dx.D_PARAMS_AFTER


def test_no_setup_warning_for_fp32(tmp_path: Path) -> None:
    cb = GradientHealth(report_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradientHealth.*")
        assert fit(make_trainer(tmp_path, cb, max_steps=2), ToyLM(), lm_loader(2)) is None


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


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(on_nonfinite="ignore"),
        dict(max_consecutive_skipped=-1),
        dict(max_consecutive_skipped=1.5),
        dict(min_loss_scale=-1.0),
        dict(min_loss_scale=math.nan),
        dict(skip_budget=-1),
        dict(log_per_module_topk=-2),
        dict(label_key=""),
        dict(ignore_index="x"),
        dict(report_dir=""),
        dict(snapshot_every_n_steps=0),
        dict(snapshot_device="not-a-device"),
        dict(warn_on_setup="yes"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GradientHealth(**kwargs)


# ======================================================================================= non-SFT LightningModule
def test_unchanged_callback_on_an_mlp_classifier(tmp_path: Path) -> None:
    """Tuple batches, no labels key, classification: three epochs over data with one corrupt input row."""
    x, y = blobs(n=256, nan_rows=(80,))  # row 80 is in batch 5 of every epoch
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    model = MLPClassifier()
    cb = GradientHealth(on_nonfinite="skip")
    trainer = make_trainer(tmp_path, cb, max_epochs=3, max_steps=-1)
    with pytest.warns(UserWarning, match="no 'labels' key"):
        assert fit(trainer, model, loader) is None
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


def test_every_diagnosis_comes_with_a_fix() -> None:
    from callbacks import _diagnosis as dx

    for line in (dx.D_PARAMS_BEFORE, dx.D_PARAMS_AFTER, dx.D_EMPTY_BATCH, dx.D_LOSS_NAN, dx.D_LOSS_INF,
                 dx.D_GRAD_OVERFLOW, dx.D_GRAD_NAN, dx.scale_collapse(65536, 1e-4, 18)):
        assert dx.advice(line) != "see the report", line


def test_rollback_is_suggested_only_to_runs_that_do_not_roll_back() -> None:
    from callbacks import _diagnosis as dx

    for line in (dx.D_PARAMS_BEFORE, dx.D_PARAMS_AFTER):
        assert dx.advice(line, "abort").endswith("or use on_nonfinite='rollback'")
        assert dx.advice(line, "skip").endswith("or use on_nonfinite='rollback'")
        assert "rollback" not in dx.advice(line, "rollback")
    assert "rollback" not in dx.advice(dx.D_LOSS_NAN, "abort")
