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


Groups = dict[tuple[torch.device, torch.dtype], list[int]]


def groups_of(tensors: Sequence[Tensor | None]) -> Groups:
    """Input positions by (device, dtype): one fused kernel per group. A gradient has its parameter's device and
    dtype, so a caller may compute this once from the parameters and reuse it for every step's gradients."""
    groups: Groups = {}
    for i, t in enumerate(tensors):
        if t is not None:
            groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def norm_parts(
    tensors: Sequence[Tensor | None], out_device: torch.device, groups: Groups | None = None, plain: bool = False
) -> tuple[list[Tensor], list[int]]:
    """The L2 norm of every non-``None`` tensor as 0-dim fp32 tensors on ``out_device``: one fused kernel per
    (device, dtype) group, no host sync. Ordered by group, not by input position (no index tensor has to be copied
    to the device); the second value maps output position -> input position. ``None`` entries (parameters that
    received no gradient) are left out: they contribute nothing to a total norm. A DTensor's entry is the norm of
    this rank's shard. ``plain``: the caller knows there is no DTensor, so sparse tensors are the only exception
    (found by the kernel refusing them)."""
    order: list[int] = []
    parts: list[Tensor] = []
    with torch.no_grad():  # no graph, so parameters need no per-tensor .detach()
        for (device, dtype), idx in (groups if groups is not None else groups_of(tensors)).items():
            present = [i for i in idx if tensors[i] is not None]
            if not present:
                continue
            acc_dtype = torch.float32 if dtype in _ACCUMULATE_IN_FP32 else None
            group = [tensors[i] for i in present]
            try:
                norms = list(torch._foreach_norm(group if plain else [_dense(t) for t in group], 2, dtype=acc_dtype))  # type: ignore[misc]
            except (RuntimeError, NotImplementedError):  # sparse gradients (nn.Embedding(sparse=True))
                norms = list(torch._foreach_norm([_dense(t) for t in group], 2, dtype=acc_dtype))  # type: ignore[arg-type]
            if device != out_device or acc_dtype is None:
                norms = [n.to(device=out_device, dtype=torch.float32, non_blocking=True) for n in norms]
            parts.extend(norms)
            order.extend(present)
    return parts, order


def per_tensor_norms(tensors: Sequence[Tensor | None], out_device: torch.device) -> tuple[Tensor, list[int]]:
    """:func:`norm_parts` as one fp32 vector on ``out_device``."""
    parts, order = norm_parts(tensors, out_device)
    if not parts:
        return torch.zeros(0, dtype=torch.float32, device=out_device), order
    return torch.stack(parts), order


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

