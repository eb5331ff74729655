"""The training precision is the machine's, not the config's: ``16-mixed`` on CUDA, ``bf16-mixed`` where a CPU really computes
bf16 faster than fp32, else ``32-true``. A precision the user sets is kept, with a warning where it is much slower here.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# The decision's shape: one decode-step MLP matmul of the embedded model (200 x 576 x 1536).
_PROBE_SHAPE = (200, 576, 1536)
# bf16 must beat fp32 by this factor to be chosen: below it the rounding is not worth it.
MIN_BF16_SPEEDUP = 1.2
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")
CPU_HALF_PRECISIONS = (*BF16_PRECISIONS, "16-mixed", "16-true", "16")  # Lightning runs 16-mixed as bf16 on CPU


@dataclass(frozen=True)
class CpuFacts:
    """What the CPU computes natively, as torch sees it.

    Attributes:
        capability: ATen's vector ISA (``AVX512``, ``AVX2``, ...: ``torch.backends.cpu.get_cpu_capability()``).
        native_bf16: oneDNN computes bf16 with native instructions (AVX512-BF16 or AMX).
        bf16_speedup: measured fp32 time / bf16 time of one probe matmul; None when not measured.
    """

    capability: str
    native_bf16: bool
    bf16_speedup: float | None = None

    def describe(self) -> str:
        measured = "" if self.bf16_speedup is None else f", bf16 matmul {self.bf16_speedup:.2g}x the speed of fp32 (measured)"
        native = "native bf16" if self.native_bf16 else "no native bf16"
        return f"CPU {self.capability}, {native}{measured}"


@dataclass(frozen=True)
class PrecisionChoice:
    """A trainer precision, the frozen base's dtype that goes with it, and why."""

    precision: str
    base_dtype: str
    reason: str

    def announcement(self) -> str:
        return f"precision: {self.precision}, frozen base {self.base_dtype} ({self.reason})"


def choose_precision(accelerator: str, facts: CpuFacts | None) -> PrecisionChoice:
    """The fastest precision the hardware really runs (see the module docstring)."""
    if accelerator in ("cuda", "gpu"):
        return PrecisionChoice("16-mixed", "float32", "CUDA: fp16 autocast with a GradScaler, the request's default")
    if accelerator != "cpu" or facts is None:
        return PrecisionChoice("32-true", "float32", f"accelerator {accelerator}: fp32, the safe default")
    if facts.native_bf16 and (facts.bf16_speedup is None or facts.bf16_speedup >= MIN_BF16_SPEEDUP):
        return PrecisionChoice("bf16-mixed", "bfloat16", f"{facts.describe()}: bf16 autocast is the fast path")
    if facts.native_bf16:
        return PrecisionChoice("32-true", "float32", f"{facts.describe()}: bf16 is not faster here, fp32 is exact")
    return PrecisionChoice("32-true", "float32", f"{facts.describe()}: bf16 would run ~100x slower than fp32 here")


def slow_precision_warning(precision: str | None, accelerator: str, facts: CpuFacts | None) -> str | None:
    """A warning for a user-set precision that is much slower on this machine, or None."""
    if accelerator != "cpu" or facts is None or precision is None or facts.native_bf16:
        return None
    if str(precision) not in CPU_HALF_PRECISIONS:
        return None
    return (
        f"trainer.precision={precision} runs bf16 matmuls on this CPU, which has no native bf16 ({facts.describe()}): "
        "they are ~100x slower than fp32. Fix: leave trainer.precision unset (the machine's choice: 32-true here) "
        "or set --trainer.precision 32-true."
    )


def cpu_kind(facts: CpuFacts, flags: set[str]) -> str:
    """The CPU kind results are kept per: ``cpu-amx``, ``cpu-avx512bf16`` (native bf16 without AMX), ``cpu-avx2``
    (no native bf16: training runs in fp32), ``cpu`` (anything older). ``flags``: /proc/cpuinfo's."""
    if facts.native_bf16:
        return "cpu-amx" if "amx_bf16" in flags else "cpu-avx512bf16"
    return "cpu-avx2" if facts.capability.startswith(("AVX2", "AVX512")) else "cpu"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def base_dtype_for(precision: str | None) -> str:
    """The frozen base's dtype for a trainer precision: bf16 under bf16 precisions (autocast would cast every
    matmul's weight to bf16 anyway), else fp32 (a fp16 base under AMP overflows; LoRA weights stay fp32)."""
    return "bfloat16" if str(precision) in BF16_PRECISIONS else "float32"


@functools.cache
def probe_cpu() -> CpuFacts:
    """This CPU's facts: torch's view of the ISA and oneDNN's bf16 support, confirmed by a short measurement
    where bf16 is claimed (a few milliseconds; skipped where bf16 is not native, since it would then take
    the longest)."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return CpuFacts(capability, native, measure_bf16_speedup() if native else None)


def measure_bf16_speedup(shape: tuple[int, int, int] = _PROBE_SHAPE, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one matmul, best of ``repeats`` each, alternating."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(repeats + 1):  # the first round warms both kernels up
        for dtype, (a, b) in ((torch.float32, (a32, b32)), (torch.bfloat16, (a16, b16))):
            start = time.perf_counter()
            torch.mm(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def machine_precision(accelerator: str) -> PrecisionChoice:
    """``choose_precision`` for this machine (CUDA when the accelerator asks for it and is there)."""
    if accelerator in ("auto", "gpu", "cuda"):
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_precision(accelerator, probe_cpu() if accelerator == "cpu" else None)
