"""The machine's measured matmul ceiling: what FLOP/s a large matmul reaches in the dtype the project computes in here.

    python -m benchmarks.hardware [--size 4096] [--repeats 5]

The ceiling is the best of ``--repeats`` timed ``torch.matmul`` calls of two ``size x size`` matrices (after one
untimed call), with torch's default thread count, in bf16 on a CPU that computes it natively, fp16 on CUDA, and
fp32 on a CPU without native bf16 (AVX2 only), where bf16 is emulated and is measured on a small square for
reference only (a large one would take minutes). A second, model-shaped matmul in the same dtype (one training batch of
16 x 32 tokens through SmolLM2-135M's 576 -> 1536 MLP projection) shows how much of that ceiling the small
matrices of a 135M-parameter model can reach at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_description, result_path, write_json


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int, device: str = "cpu", min_s: float = 0.2) -> dict[str, Any]:
    """FLOP/s of ``(m x k) @ (k x n)``; each timed sample runs enough calls to last ``min_s``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.matmul(a, b, out=out)  # first call: kernel selection, oneDNN primitive creation
    sync()
    t0 = time.perf_counter()
    torch.matmul(a, b, out=out)
    sync()
    calls = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b, out=out)
        sync()
        samples.append((time.perf_counter() - t0) / calls)
    flops = 2.0 * m * k * n
    return {
        "shape": [m, k, n],
        "dtype": str(dtype).replace("torch.", ""),
        "calls_per_sample": calls,
        "best_s": min(samples),
        "median_s": statistics.median(samples),
        "flops_per_s_best": flops / min(samples),
        "flops_per_s_median": flops / statistics.median(samples),
    }


def peak_dtype(device: str) -> tuple[str, torch.dtype]:
    """The dtype the project's default precision computes matmuls in on ``device``."""
    if device == "cuda":
        return "fp16", torch.float16
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16", torch.bfloat16
    return "fp32", torch.float32


def measure(size: int = 4096, repeats: int = 5, device: str = "cpu", log=print) -> dict[str, Any]:
    key, dtype = peak_dtype(device)
    rows = {f"{key}_square": matmul_rate(size, size, size, dtype, repeats, device)}
    if key != "fp32":
        rows["fp32_square"] = matmul_rate(size, size, size, torch.float32, max(2, repeats // 2), device)
    else:
        rows["bf16_square_512"] = matmul_rate(512, 512, 512, torch.bfloat16, 1, device, min_s=0.0)
    rows[f"{key}_model_shaped"] = matmul_rate(16 * 32, 576, 1536, dtype, repeats, device)
    ceiling = rows[f"{key}_square"]["flops_per_s_best"]
    for name, row in rows.items():
        log(f"  {name:<18} {'x'.join(map(str, row['shape'])):<16} {row['flops_per_s_best'] / 1e9:8.1f} GFLOP/s (best), {row['flops_per_s_median'] / 1e9:8.1f} median")
    return {
        "benchmark": "matmul FLOP/s ceiling",
        "torch_threads": torch.get_num_threads(),
        "matmuls": rows,
        "peak_dtype": key,
        "peak_flops": ceiling,
        "model_shaped_fraction_of_peak": rows[f"{key}_model_shaped"]["flops_per_s_best"] / ceiling,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/hardware-<machine kind>.json)")
    args = p.parse_args(argv)
    result = measure(args.size, args.repeats, args.accelerator)
    result["machine"] = machine_description(args.accelerator)
    args.out = args.out or result_path("hardware", getattr(args, "accelerator", "cpu"))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
