"""Act: skip, rollback and abort leave exactly the weights and optimiser state they promise, never let a poisoned
checkpoint be written, and keep their counters across a resume (tiny models trained for real, CPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.toy_models import ToyLM, flat, lm_eval_loss, lm_loader, states_equal
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth, NonFiniteTrainingError
from callbacks.gradient_health import decide as dx

from ._harness import FAULT_STEP, MAX_STEPS, all_finite, fit, make_trainer, read_report

pytestmark = pytest.mark.usefixtures("quiet_training")


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
    assert [(t["global_step"], t["batch_idx"], t["diagnosis"]) for t in cb.trips] == [(2, 4, dx.D_LOSS_NAN)]  # the first NaN micro-batch
    assert torch.equal(model.after[5], model.before[4])
    assert trainer.global_step == 4 and all_finite(model)


def test_skip_budget_exhausted_aborts(tmp_path: Path) -> None:
    model = ToyLM(fault="nan_loss", fault_steps=(2, 4))
    cb = GradientHealth(on_nonfinite="skip", skip_budget=1, report_dir=str(tmp_path))
    err = fit(make_trainer(tmp_path, cb), model, lm_loader(MAX_STEPS))
    assert err is not None and err.global_step == 4
    assert [(t["global_step"], t["action"]) for t in cb.trips] == [(2, "skip"), (4, "abort")]
    assert cb.trips[-1]["abort_reason"] == "skip budget of 1 exhausted"
    assert [t["action"] for t in read_report(tmp_path)["trips"]] == ["skip", "abort"]


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


# ============================================================================================ several optimisers
class TwoOptimizers(L.LightningModule):
    """Manual optimisation with one optimiser per layer; after the last batch's updates both layers go NaN."""

    def __init__(self, poison_batch: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)
        self.poison_batch = poison_batch
        self.before: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.before = {n: p.detach().clone() for n, p in self.named_parameters()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        opt_a, opt_b = self.optimizers()  # type: ignore[misc]
        loss = F.mse_loss(self.b(torch.tanh(self.a(x))).squeeze(-1), y)
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()
        if batch_idx == self.poison_batch:
            with torch.no_grad():  # both layers broken after their updates: only the post-update check sees it
                self.a.weight.fill_(math.nan)
                self.b.weight.fill_(math.nan)

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def test_rollback_after_the_last_update_restores_every_optimizer(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, generator=g)
    model = TwoOptimizers(poison_batch=3)
    cb = GradientHealth(on_nonfinite="rollback", label_key=None, report_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb],
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert [t["detected_at"] for t in cb.trips] == ["train_end"] and cb.rolled_back_steps == 1
    for name, p in model.named_parameters():  # both optimisers' weights, not only the first one's
        assert torch.equal(p.detach(), model.before[name]), name
