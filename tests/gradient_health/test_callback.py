"""The callback itself: its arguments are checked, and its checkpoint state is keyed so that two instances keep
separate entries while checkpoints from before ``state_key`` still load (CPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers.toy_models import ToyLM, lm_loader
from lightning.pytorch.callbacks import ModelCheckpoint

import callbacks
from callbacks import GradientHealth

pytestmark = pytest.mark.usefixtures("quiet_training")


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


# ============================================================================================ checkpoint state
def test_two_instances_keep_separate_checkpoint_state(tmp_path: Path) -> None:
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


def test_the_public_names() -> None:
    from callbacks.gradient_health import GradientHealth as from_package

    assert from_package is GradientHealth
    assert {"GradientHealth", "GradientHealthConfigError", "NonFiniteTrainingError", "TrainingSpikeError", "active_scaler",
            "read_skip_list", "atomic_file", "KEY_GRAD_NORM", "REPORT_FILE"} <= set(callbacks.__all__)
    assert all(getattr(callbacks, name) is not None for name in callbacks.__all__)
    assert GradientHealth().state_key == "GradientHealth{'on_nonfinite': 'abort', 'label_key': 'labels', 'report_dir': None}"
