"""Fused per-tensor L2 norms that stay on the device.

Why a module of its own: the health check must cost one fused kernel per (device, dtype) group and no host
sync, so every caller gets the same grouping, fp32 accumulation and ordering rules from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .sharding import local

# Norms of 16-bit tensors are accumulated in fp32: a gradient whose values are finite in fp16 can have a
# norm above 65504, and that must not be mistaken for an overflow.
_ACCUMULATE_IN_FP32 = (torch.float16, torch.bfloat16, torch.float32)


@torch.no_grad()  # no graph, so parameters need no per-tensor .detach()
def per_tensor_norms(tensors: Sequence[Tensor | None], out_device: torch.device) -> tuple[Tensor, list[int]]:
    """Return the L2 norm of every non-``None`` tensor as one fp32 vector on ``out_device``.

    A DTensor's entry is the norm of this rank's shard. The vector is ordered by (device, dtype) group, not by
    input position, so no index tensor has to be copied to the device; the second return value maps vector
    position -> input position. ``None`` entries (parameters that received no gradient) are left out; they
    contribute nothing to a total norm.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        if t is not None:
            groups.setdefault((t.device, t.dtype), []).append(i)

    order: list[int] = []
    parts: list[Tensor] = []
    for (_device, dtype), idx in groups.items():
        group = [_dense(tensors[i]) for i in idx]  # type: ignore[arg-type]
        acc_dtype = torch.float32 if dtype in _ACCUMULATE_IN_FP32 else None
        norms = torch._foreach_norm(group, 2, dtype=acc_dtype)
        parts.append(torch.stack(norms).to(device=out_device, dtype=torch.float32, non_blocking=True))
        order.extend(idx)
    if not parts:
        return torch.zeros(0, dtype=torch.float32, device=out_device), order
    return torch.cat(parts) if len(parts) > 1 else parts[0], order


def total_norm(norms: Tensor) -> Tensor:
    """L2 norm of a vector of per-tensor norms (0-dim fp32). NaN if any entry is NaN, inf if any is inf."""
    if norms.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=norms.device)
    return torch.linalg.vector_norm(norms)


def _dense(t: Tensor) -> Tensor:
    # foreach kernels take neither sparse tensors (nn.Embedding(sparse=True) gradients) nor DTensors (FSDP2): a
    # DTensor's norm here is its local shard's, which the sharded total norm combines over ranks
    t = local(t)
    return t.coalesce().values() if t.is_sparse else t

