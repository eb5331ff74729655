"""GradientHealth's rules without a training loop (action policy, preflight, scaler rule, refused strategies), and
the review findings that need one: several optimisers rolled back together, two instances in one checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from _toy_models import MLPClassifier, ToyLM, blobs, lm_loader
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth, GradientHealthConfigError, NonFiniteTrainingError, active_scaler
from callbacks import _diagnosis as dx
from callbacks import _preflight as pf

pytestmark = pytest.mark.usefixtures("quiet_training")




# =============================================================================================== action policy
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


# ================================================================================================= preflight
BASE = pf.Facts(
    precision="32-true", scaler_active=False, trainable_dtypes={}, clip_val=0.0, mixed_precision_plugin=False,
    fused_optimizers=(), own_clipping=False,
)


def facts(**changes: Any) -> pf.Facts:
    return pf.Facts(**{**BASE.__dict__, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        (dict(precision="bf16-mixed", mixed_precision_plugin=True), []),
        (dict(precision="16-mixed", scaler_active=True, trainable_dtypes={"float16": 4}), ["fp16_trainable_under_amp"]),
        (dict(precision="bf16-true", trainable_dtypes={"bfloat16": 2}), ["low_precision_trainable"]),
        (dict(precision="16-true", trainable_dtypes={"float16": 2}), ["low_precision_trainable", "fp16_without_scaler"]),
        (dict(precision="16-mixed", scaler_active=False), ["fp16_without_scaler"]),
        (dict(clip_val=1.0, mixed_precision_plugin=True, fused_optimizers=("AdamW",)), ["clipping_refused"]),
        (dict(clip_val=1.0, mixed_precision_plugin=True, fused_optimizers=("AdamW",), own_clipping=True), []),
        (dict(clip_val=0.0, mixed_precision_plugin=True, fused_optimizers=("AdamW",)), []),
        (dict(clip_val=1.0, mixed_precision_plugin=False, fused_optimizers=("AdamW",)), []),
    ],
)
def test_preflight_rules(changes: dict[str, Any], expected: list[str]) -> None:
    f = facts(**changes)
    fired = [rule.__name__ for rule in pf.RULES if rule(f) is not None]
    assert fired == expected
    assert all("Fix:" in m or "Keep trainable" in m for m in pf.preflight(f))


class FusedMLP(MLPClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=True)


def _mlp_loader() -> DataLoader:
    x, y = blobs(64)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_refused_clipping_is_warned_at_fit_start_and_lightning_does_refuse(tmp_path: Path) -> None:
    cb = GradientHealth(label_key=None, report_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
    )
    with (
        pytest.warns(UserWarning, match="refuses to clip for an optimiser that unscales inside step"),
        pytest.raises(RuntimeError, match="does not allow for gradient clipping"),  # the warning was right
    ):
        trainer.fit(FusedMLP(), _mlp_loader())


def test_fp16_trainable_weights_under_16_mixed_are_warned_and_do_fail(tmp_path: Path) -> None:
    model = ToyLM().half()
    cb = GradientHealth(report_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))],
    )
    with (
        pytest.warns(UserWarning, match="trainable parameters are float16 under precision='16-mixed'"),
        pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"),  # the original failure
    ):
        trainer.fit(model, lm_loader(2))


def test_first_batch_without_supervised_tokens_is_warned(tmp_path: Path) -> None:
    cb = GradientHealth(report_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb],
    )
    with (
        pytest.warns(UserWarning, match="the first training batch has no supervised tokens"),
        pytest.raises(NonFiniteTrainingError) as info,
    ):
        trainer.fit(ToyLM(), lm_loader(2, empty_at=(0,)))
    assert info.value.diagnosis == dx.D_EMPTY_BATCH and info.value.global_step == 0


# ============================================================================================== scaler rule
def test_one_rule_for_an_active_scaler() -> None:
    assert active_scaler(SimpleNamespace()) is None
    assert active_scaler(SimpleNamespace(scaler=None)) is None
    assert active_scaler(SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False))) is None
    on = torch.amp.GradScaler("cpu")
    assert active_scaler(SimpleNamespace(scaler=on)) is on


# ======================================================================================== refused strategies
@pytest.mark.parametrize("kind", [FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy])
def test_sharded_strategies_are_refused_with_the_fix(kind: type) -> None:
    trainer = SimpleNamespace(strategy=object.__new__(kind))  # no backend needed to be refused
    with pytest.raises(GradientHealthConfigError, match=f"{kind.__name__} is not supported.*Fix: use strategy='ddp'"):
        GradientHealth().setup(trainer, None, "fit")  # type: ignore[arg-type]


def test_ddp_is_accepted() -> None:
    GradientHealth().setup(SimpleNamespace(strategy=object.__new__(DDPStrategy)), None, "fit")  # type: ignore[arg-type]


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


# ============================================================================================ checkpoint state
def test_two_instances_keep_separate_checkpoint_state_and_old_checkpoints_load(tmp_path: Path) -> None:
    def trainer_with(callbacks: list[L.Callback], steps: int) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(tmp_path), callbacks=callbacks,
        )

    skip, rollback = GradientHealth(on_nonfinite="skip"), GradientHealth(on_nonfinite="rollback")
    assert skip.state_key != rollback.state_key
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=1)
    trainer_with([skip, rollback, ckpt], 4).fit(ToyLM(fault="nan_loss", fault_steps=(2,)), lm_loader(8))
    assert (skip.skipped_steps, rollback.rolled_back_steps) == (1, 1)  # both saw the trip, each acted its way

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    states = {k: v for k, v in saved["callbacks"].items() if k.startswith("GradientHealth")}
    assert {k: (v["skipped_steps"], v["rolled_back_steps"]) for k, v in states.items()} == {
        skip.state_key: (1, 0),
        rollback.state_key: (0, 1),
    }
    skip2, rollback2 = GradientHealth(on_nonfinite="skip"), GradientHealth(on_nonfinite="rollback")
    trainer_with([skip2, rollback2], 5).fit(ToyLM(), lm_loader(8), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert (skip2.skipped_steps, skip2.rolled_back_steps, rollback2.rolled_back_steps) == (1, 0, 1)

    # a checkpoint from before state_key (one entry under the class name) still restores the counters
    saved["callbacks"] = {"GradientHealth": states[skip.state_key]}
    torch.save(saved, tmp_path / "old.ckpt")
    old = GradientHealth(on_nonfinite="skip")
    trainer_with([old], 5).fit(ToyLM(), lm_loader(8), ckpt_path=str(tmp_path / "old.ckpt"))
    assert old.skipped_steps == 1
