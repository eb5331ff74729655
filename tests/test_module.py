"""SFTModule's model construction, on the offline tiny model."""

from __future__ import annotations

import pytest
import torch

from sft_lightning.models.loading import ModelLoadError
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


def test_lora_on_the_top_layers_only_and_backward_stops_there() -> None:
    module = SFTModule(model="tiny-random", lora_r=4, lora_layers=1)
    module.configure_model()
    layers = module.model.get_base_model().model.layers
    adapted = [i for i, layer in enumerate(layers) if any("lora_" in n for n, _ in layer.named_parameters())]
    assert adapted == [len(layers) - 1]
    ids = torch.randint(3, 60, (2, 10))
    labels = ids.clone()
    labels[:, :5] = -100
    from sft_lightning.loss import supervised_loss_sum

    loss, n = supervised_loss_sum(module.model, ids, torch.ones_like(ids), labels)
    (loss / n).backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    # the layers below take no part in backward: their activations were never recorded
    captured = {}
    layers[0].register_forward_hook(lambda mod, args, out: captured.setdefault("out", out[0] if isinstance(out, tuple) else out))
    supervised_loss_sum(module.model, ids, torch.ones_like(ids), labels)
    assert not captured["out"].requires_grad


@pytest.mark.parametrize("count", [0, -1, 1.5])
def test_lora_layers_must_be_a_positive_count(count: object) -> None:
    from sft_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="model.lora_layers"):
        SFTModule(model="tiny-random", lora_layers=count)  # type: ignore[arg-type]


def test_more_lora_layers_than_the_model_has_adapts_all() -> None:
    module = SFTModule(model="tiny-random", lora_r=4, lora_layers=99)
    module.configure_model()
    layers = module.model.get_base_model().model.layers
    assert all(any("lora_" in n for n, _ in layer.named_parameters()) for layer in layers)


@pytest.mark.parametrize(
    ("precision", "device", "compiled"), [("bf16-mixed", "cpu", True), ("32-true", "cpu", False), ("16-mixed", "cuda", True)]
)
def test_compile_auto_compiles_only_where_it_pays(precision: str, device: str, compiled: bool) -> None:
    from sft_lightning.models.compile import compile_pays

    assert compile_pays((precision, device)) is compiled
