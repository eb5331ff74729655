"""Generation with the LoRA update folded into a temporary copy of the frozen weights (``merged_lora_weights``).

No per-op LoRA overhead at each decoding step; training resumes bit-for-bit (docs/design.md, "Generation").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def merged_lora_weights(model: nn.Module) -> Iterator[int]:
    """Inside the block, ``model`` (a peft LoRA model, or any other module: then nothing changes)
    computes base + LoRA with the base layers alone. Yields the number of merged layers.
    """
    from peft.tuners.lora import LoraLayer

    saved: list[tuple[nn.Module, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                    continue
                adapters = [a for a in module.active_adapters if a in module.lora_A]
                if not adapters:
                    continue
                base = module.get_base_layer()
                weight = base.weight
                merged = weight.float()
                for adapter in adapters:
                    merged = merged + module.get_delta_weight(adapter).float()
                saved.append((base, weight))
                base.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=False)
        if not saved:
            yield 0
            return
        with model.disable_adapter():  # LoRA branches off: the merged base layers do all the work
            yield len(saved)
    finally:
        for base, weight in saved:
            base.weight = weight
