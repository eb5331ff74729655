"""Measure: what one optimiser step is measured to be - the loss as training_step returned it, batches without
targets, weights broken by the update, the logged interval maxima - and what the measuring costs: one host sync
per step and exactly two weight passes (tiny models trained for real, CPU)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from helpers.toy_models import AttrBatches, ToyLM, lm_loader
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from callbacks import GradientHealth, active_scaler
from callbacks.gradient_health import decide as dx

from ._harness import FAULT_STEP, MAX_STEPS, fit, make_trainer

pytestmark = pytest.mark.usefixtures("quiet_training")


# ====================================================================================================== the loss
def test_report_loss_is_unscaled_and_unnormalised(tmp_path: Path) -> None:
    # empty batch under a GradScaler with accumulation: the reported loss is the training_step loss
    model = ToyLM(loss_norm="fixed")
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer = make_trainer(tmp_path, cb, scaler=True, accumulate_grad_batches=2, max_steps=3)
    assert fit(trainer, model, lm_loader(MAX_STEPS, empty_at=(3,))) is None
    trip = cb.trips[0]
    assert (trip["global_step"], trip["diagnosis"], trip["loss_scale"]) == (1, dx.D_EMPTY_BATCH, 65536.0)
    assert trip["loss"] == pytest.approx((model.losses[2] + model.losses[3]) / 2, rel=1e-3)


# ========================================================================== batches without targets
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


def test_pure_fp16_adamw_weights_go_nan_in_the_update(tmp_path: Path) -> None:
    """Real failure, no injection: AdamW's eps=1e-8 underflows to 0 in fp16, so parameters without gradient
    signal get 0/0 = NaN in the first update. Loss and grads were finite; the weights were not afterwards."""
    cb = GradientHealth(report_dir=str(tmp_path), warn_on_setup=False)
    err = fit(make_trainer(tmp_path, cb, precision="16-true"), ToyLM(), lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == 1 and err.diagnosis == dx.D_PARAMS_AFTER


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


@pytest.mark.parametrize(
    "extra",
    [{}, {"on_spike": "skip", "spike_min_history": 2, "spike_threshold": 1000.0, "hold_scheduler_on_scaler_skip": True}],
    ids=["default", "spike_rule_judging"],
)
def test_one_host_sync_per_optimizer_step(extra: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every device->host transfer the callback makes during training is counted: one per optimiser step (the spike
    rule judges from values that read already carries)."""
    counts: Counter[str] = Counter()
    inside = [False]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            if inside[0]:
                counts[_name] += 1
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)

    cb = GradientHealth(log_per_module_topk=2, on_nonfinite="rollback", **extra)
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
    if extra:
        assert len(cb.state_dict()["spike_history"]["loss"]) == MAX_STEPS and cb.spikes == 0  # judged every step


def test_two_weight_passes_per_healthy_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The weights are read before each step (catches writes from outside the optimiser) and after each update
    (catches the update itself); the gradients once: no version-counter shortcut."""
    from callbacks.gradient_health import measure as gh

    passes: Counter[str] = Counter()
    original = gh.norm_parts

    def counting(tensors: Any, out_device: torch.device, *args: Any) -> Any:
        present = [t for t in tensors if t is not None]
        if present:
            passes["weights" if isinstance(present[0], torch.nn.Parameter) else "grads"] += 1
        return original(tensors, out_device, *args)

    monkeypatch.setattr(gh, "norm_parts", counting)
    cb = GradientHealth()
    assert fit(make_trainer(tmp_path, cb), ToyLM(), lm_loader(MAX_STEPS)) is None
    assert passes == Counter({"grads": MAX_STEPS, "weights": 2 * MAX_STEPS})


# ============================================================================================== scaler rule
def test_one_rule_for_an_active_scaler() -> None:
    assert active_scaler(SimpleNamespace()) is None
    assert active_scaler(SimpleNamespace(scaler=None)) is None
    assert active_scaler(SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False))) is None
    on = torch.amp.GradScaler("cpu")
    assert active_scaler(SimpleNamespace(scaler=on)) is on
