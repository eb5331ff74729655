"""SFTModule's optimiser: fused AdamW where it is safe, and gradient clipping that still happens with it.

Lightning's mixed-precision plugin refuses to clip for any fused optimiser (under a GradScaler such an optimiser
unscales inside ``step()``), so SFTModule clips those itself. These tests train the real module on the offline
``tiny-random`` model and look at the gradients the optimiser's ``step()`` actually receives.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision

from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.module import SFTModule

STEPS = 3
CLIP = 1e-3  # far below tiny-random's gradient norms (~1): every step must be clipped


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


class StepProbe(Callback):
    """Gradients before clipping (Lightning's hook runs before it) and as ``optimizer.step()`` used them."""

    def __init__(self) -> None:
        self.fused: list[bool] = []
        self.pre_clip: list[float] = []
        self.at_step: list[float] = []
        self.pre_clip_max: list[float] = []
        self.at_step_max: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        self.fused = [bool(group.get("fused")) for group in optimizer.param_groups]
        optimizer.register_step_post_hook(self._at_step)  # step() runs the closure first: grads exist only after

    def _at_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.at_step.append(_grad_norm(optimizer))
        self.at_step_max.append(_grad_max(optimizer))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.pre_clip.append(_grad_norm(optimizer))
        self.pre_clip_max.append(_grad_max(optimizer))


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad.float() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _grad_norm(optimizer: torch.optim.Optimizer) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in _grads(optimizer)])))


def _grad_max(optimizer: torch.optim.Optimizer) -> float:
    return max(float(g.abs().max()) for g in _grads(optimizer))


def fit(tmp_path: Path, precision: Any, clip: float = CLIP, algorithm: str = "norm") -> StepProbe:
    probe = StepProbe()
    plugins = [precision] if isinstance(precision, MixedPrecision) else None
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=None if plugins else precision,
        plugins=plugins,
        max_steps=STEPS,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[probe],
    )
    module = SFTModule(model="tiny-random", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3)
    data = SFTDataModule(train_size=32, val_size=4, batch_size=8, tokenizer="tiny-random", max_length=160, seed=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == STEPS
    return probe


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_is_used_and_still_clipped(tmp_path: Path, precision: str) -> None:
    probe = fit(tmp_path, precision)
    assert probe.fused == [True]
    assert len(probe.pre_clip) == len(probe.at_step) == STEPS
    assert all(norm > 100 * CLIP for norm in probe.pre_clip)  # the gradients did need clipping
    assert all(norm == pytest.approx(CLIP, rel=1e-3) for norm in probe.at_step)  # and step() saw them clipped


def test_fused_adamw_clips_by_value(tmp_path: Path) -> None:
    probe = fit(tmp_path, "bf16-mixed", clip=1e-5, algorithm="value")
    assert probe.fused == [True]
    assert all(largest > 1e-4 for largest in probe.pre_clip_max)
    assert probe.at_step_max == [pytest.approx(1e-5)] * STEPS  # every step had elements clamped to exactly 1e-5


def test_gradscaler_keeps_the_unfused_optimiser_and_lightnings_clipping(tmp_path: Path) -> None:
    """A fused optimiser under a GradScaler would make Lightning raise at the first clip: it must not be chosen."""
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    probe = fit(tmp_path, scaler)
    assert probe.fused == [False]
    assert all(norm == pytest.approx(CLIP, rel=1e-3) for norm in probe.at_step if math.isfinite(norm))


def test_16_bit_trainable_weights_keep_torchs_default_adamw(tmp_path: Path) -> None:
    probe = fit(tmp_path, "bf16-true", clip=1.0)
    assert probe.fused == [False]


@pytest.mark.parametrize(
    ("strategy", "scaler", "fused"),
    [
        ("single", None, True),
        ("ddp", None, True),
        ("ddp", "scaler", False),  # fused would unscale inside step(): Lightning's clipping would refuse it
        ("single", "disabled", True),  # GradScaler(enabled=False) scales nothing: no scaler (GradientHealth's rule)
        ("deepspeed", None, False),  # a DDPStrategy subclass that owns the optimiser and clipping
        ("fsdp", None, False),  # sharded gradients: only FSDP's own clipping sees the whole norm
    ],
)
def test_fused_adamw_only_where_sftmodule_can_clip(strategy: str, scaler: Any, fused: bool) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy

    kinds = {"single": SingleDeviceStrategy, "ddp": DDPStrategy, "deepspeed": DeepSpeedStrategy, "fsdp": FSDPStrategy}
    module = SFTModule(model="tiny-random")
    # the two things the choice reads; object.__new__ because DeepSpeed/FSDP would need their backends to init
    if scaler == "disabled":
        scaler = torch.amp.GradScaler("cpu", enabled=False)
    module._trainer = SimpleNamespace(strategy=object.__new__(kinds[strategy]), precision_plugin=SimpleNamespace(scaler=scaler))
    weights = [torch.nn.Parameter(torch.zeros(2))]
    assert module._fused_adamw_ok(weights) is fused
    assert module._fused_adamw_ok([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]) is False
