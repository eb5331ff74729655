"""The Trainer, fit and report helpers shared by the GradientHealth tests that train ``ToyLM`` for real (CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from helpers.toy_models import flat, fp16_scaler_plugin

from callbacks import GradientHealth, NonFiniteTrainingError

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
