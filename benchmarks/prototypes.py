"""Prototypes of speed-ups for sft_lightning, measured by the benchmarks before anyone changes the package.

``merged_lora_weights``: generation with the LoRA update folded into the frozen weights.

Why: with LoRA on all 7 projections of 30 layers, every decoding step runs 210 LoRA branches on top of the
base matmuls: per branch two tiny matmuls (rank 8), a scale, an add, and (LoRA weights are fp32 on a bf16 base,
under bf16 autocast) dtype casts of the input and of both LoRA weights: the profile counts ~1,000 ``aten::to``
copies per decoding step, each on a 1-token-per-row activation, i.e. per-op overhead, not arithmetic. Folding
``W + scale * B @ A`` into a temporary copy of each base weight removes all of it; the original weight tensors
are put back afterwards (not un-merged arithmetically, which in bf16 would not restore them exactly), so
training continues bit-for-bit as before. Cost: one extra copy of the adapted weights (~210 MB in bf16 for
SmolLM2-135M) while generating, and ~0.1 s to build it per validation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def merged_lora_weights(model: nn.Module) -> Iterator[int]:
    """Inside the block, ``model`` (a peft LoRA model) computes base + LoRA with the base layers alone.

    Yields the number of merged layers. Exact restore: the original weight Parameters are put back.
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
        with model.disable_adapter():  # LoRA branches off: the merged base layers do all the work
            yield len(saved)
    finally:
        for base, weight in saved:
            base.weight = weight
