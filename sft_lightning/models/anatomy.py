"""Where things are inside a Hugging Face causal LM, peft-wrapped or not: the one place that knows.

The loss and generation need the decoder body and the LM head apart; compilation and LoRA targets need the decoder layers.
"""

from __future__ import annotations

from torch import nn


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder body, LM head) of a Hugging Face causal LM, peft-wrapped or not."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated blocks of a Hugging Face decoder (``model.model.layers`` for Llama-likes)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return layers
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of decoder layers")
    return max(candidates, key=len)


def top_layers(model: nn.Module, count: int | None) -> list[int] | None:
    """Indices of the top ``count`` decoder layers (peft's ``layers_to_transform``); None for all."""
    if count is None:
        return None
    total = len(decoder_layers(model))
    return list(range(max(0, total - count), total)) if count < total else None
