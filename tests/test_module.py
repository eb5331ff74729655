"""SFTModule's model construction, on the offline tiny model."""

from __future__ import annotations

import pytest
import torch

from sft_lightning.models import ModelLoadError
from sft_lightning.module import SFTModule


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_lora_parameters_are_fp32_and_only_they_train(base_dtype: str) -> None:
    module = SFTModule(model="tiny-random", base_dtype=base_dtype, lora_r=4)
    module.configure_model()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen_dtypes = {p.dtype for p in module.parameters() if not p.requires_grad}
    assert frozen_dtypes == {getattr(torch, base_dtype)}


def test_model_is_in_train_mode_after_configure_model() -> None:
    # from_pretrained returns eval mode; left that way, LoRA dropout would silently be off.
    module = SFTModule(model="tiny-random", lora_dropout=0.1)
    module.configure_model()
    assert all(m.training for m in module.model.modules())


def test_configure_model_is_idempotent() -> None:
    module = SFTModule(model="tiny-random")
    module.configure_model()
    model = module.model
    module.configure_model()
    assert module.model is model


def test_adapter_directory_is_checked_up_front(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="has no adapter_config.json"):
        SFTModule(model="tiny-random", adapter=str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [({"lora_r": 0}, "lora_r"), ({"warmup_ratio": 1.0}, "warmup_ratio")])
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SFTModule(model="tiny-random", **kwargs)
