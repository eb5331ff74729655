"""``torch.compile`` for training: the decoder layers, one compiled graph shared by all of them; ``eager`` for generation.

Why per layer, and why generation stays eager: docs/design.md, "Compilation"; when it pays (``compile_pays``): docs/learning.md.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch._inductor.config
from torch import nn

from sft_lightning.models.anatomy import decoder_layers


def compiler_works() -> str | None:
    """None if torch.compile can build a kernel here, else the reason (e.g. no C++ compiler)."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * 2.0, dynamic=False)
        probe(torch.ones(4))
    except Exception as exc:  # inductor raises many types (missing compiler, unsupported platform...)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def compile_decoder_layers(model: nn.Module) -> int:
    """Compile every decoder layer in place; returns how many. Falls back to eager with a warning."""
    reason = compiler_works()
    if reason is not None:
        warnings.warn(
            f"model.compile=true but torch.compile does not work on this machine ({reason}); training eagerly, "
            "about 1.5x slower. Fix: install a C++ compiler (e.g. apt install g++) or set model.compile=false.",
            stacklevel=2,
        )
        return 0
    # Inductor's on-disk caches served kernels that ran several times slower than freshly compiled
    # ones, reproducibly, until the caches were bypassed (the cause, maybe artefacts built by another
    # process with other thread settings, was not pinned down). A fresh compile is paid once per fit,
    # a bad cache hit on every step, so compile fresh.
    torch._inductor.config.force_disable_caches = True
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # says only the line above
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def compile_pays(precision_and_device: tuple[str, str]) -> bool:
    """``model.compile: auto``: compile where it was measured to pay for itself within a budget's minutes:
    on CUDA, and under bf16 autocast on a CPU; not in fp32 on a CPU."""
    precision, device = precision_and_device
    return device == "cuda" or precision.startswith("bf16")


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside this block (no compilation, no recompiles)."""
    with torch.compiler.set_stance("force_eager"):
        yield
