"""Model anatomy: the decoder body, LM head and decoder layers of plain and peft-wrapped models."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model
from torch import nn

from sft_lightning.models import anatomy
from sft_lightning.models.anatomy import causal_lm_parts
from sft_lightning.models.tiny import build_tiny_llama


def test_decoder_layers_finds_the_llama_blocks() -> None:
    model = build_tiny_llama()
    layers = anatomy.decoder_layers(model)
    assert layers is model.model.layers
    assert len(layers) == model.config.num_hidden_layers


def test_decoder_layers_falls_back_to_the_longest_module_list() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2)])
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    net = Net()
    assert anatomy.decoder_layers(net) is net.blocks
    with pytest.raises(ValueError, match="no nn.ModuleList"):
        anatomy.decoder_layers(nn.Linear(2, 2))




def test_causal_lm_parts_plain_and_peft() -> None:
    model = build_tiny_llama()
    body, head = causal_lm_parts(model)
    assert body is model.model
    assert head is model.lm_head
    peft_model = get_peft_model(build_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    body, head = causal_lm_parts(peft_model)
    base = peft_model.get_base_model()
    assert body is base.model
    assert head is base.lm_head




def test_top_layers_counts_from_the_last_decoder_layer() -> None:
    model = build_tiny_llama()
    total = model.config.num_hidden_layers
    assert anatomy.top_layers(model, 1) == [total - 1]
    assert anatomy.top_layers(model, None) is None
    assert anatomy.top_layers(model, total) is None  # all layers: peft's default, no list
    assert anatomy.top_layers(model, total + 5) is None
