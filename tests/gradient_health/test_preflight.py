"""Preflight: the fit-start warnings (each rule over plain facts by table, then on real runs where the warned-of
failure does happen) and the strategies refused at setup."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from helpers.toy_models import MLPClassifier, ToyLM, blobs, lm_loader
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth, GradientHealthConfigError, NonFiniteTrainingError
from callbacks.gradient_health import decide as dx
from callbacks.gradient_health import preflight as pf

from ._harness import fit, make_trainer

pytestmark = pytest.mark.usefixtures("quiet_training")


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


def test_no_setup_warning_for_fp32(tmp_path: Path) -> None:
    cb = GradientHealth(report_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradientHealth.*")
        assert fit(make_trainer(tmp_path, cb, max_steps=2), ToyLM(), lm_loader(2)) is None


# ======================================================================================== refused strategies
def test_deepspeed_is_refused_with_the_fix() -> None:
    trainer = SimpleNamespace(strategy=object.__new__(DeepSpeedStrategy))  # no backend needed to be refused
    with pytest.raises(GradientHealthConfigError, match="DeepSpeedStrategy is not supported: the DeepSpeed engine owns.*Fix: use strategy='fsdp'"):
        GradientHealth().setup(trainer, None, "fit")  # type: ignore[arg-type]


def test_fsdp_its_subclasses_and_fsdp2_are_accepted() -> None:
    class MyFSDP(FSDPStrategy):
        pass

    for kind in (FSDPStrategy, MyFSDP, ModelParallelStrategy):
        GradientHealth().setup(SimpleNamespace(strategy=object.__new__(kind)), None, "fit")  # type: ignore[arg-type]


def test_ddp_is_accepted() -> None:
    GradientHealth().setup(SimpleNamespace(strategy=object.__new__(DDPStrategy)), None, "fit")  # type: ignore[arg-type]
