"""Facts about batches and tensors: where a key is, which rows hold a non-finite value, how many rows a batch has.

Fused per-tensor L2 norms that stay on the device.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

try:  # torch builds without distributed support have no DTensor; nothing is sharded there
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - such builds are not tested here
    DTensor = Replicate = FSDPModule = None  # type: ignore[assignment,misc]


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, ``t`` itself otherwise."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


ROWS_SHOWN = 16
# Segments that wrappers insert into module paths: nested FSDP units, torch.compile, activation checkpointing.
_WRAPPER_SEGMENT = re.compile(r"(^|\.)(_fsdp_wrapped_module|_orig_mod|_checkpoint_wrapped_module)(?=\.|$)")


def user_path(name: str) -> str:
    """A module or parameter path as the user's model spells it: ``layer._fsdp_wrapped_module.act`` -> ``layer.act``."""
    return _WRAPPER_SEGMENT.sub("", name).lstrip(".")


def find(batch: Any, key: str | None) -> Any:
    """``batch[key]`` for a mapping, ``batch.key`` otherwise; ``None`` when absent (or no key)."""
    if key is None:
        return None
    if isinstance(batch, Mapping):
        return batch.get(key)
    return getattr(batch, key, None)


def tensors_in(value: Any, *, objects: bool = False) -> Iterator[Tensor]:
    """Every tensor inside nested tuples, lists and mappings (e.g. a ``ModelOutput``), in order; with ``objects``
    also inside plain objects' attributes (attribute-access batches)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors_in(item, objects=objects)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item, objects=objects)
    elif objects and hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)):
        for item in vars(value).values():
            yield from tensors_in(item, objects=objects)


def floating_tensors(value: Any) -> list[Tensor]:
    """Every floating-point tensor inside ``value`` (see :func:`tensors_in`)."""
    return [t for t in tensors_in(value) if t.is_floating_point()]


def nonfinite_in_batch(batch: Any, batch_size: int | None) -> tuple[str, list[int] | None] | None:
    """(key, rows) of the first floating tensor of the batch holding a non-finite value; ``None`` if all finite."""
    if isinstance(batch, Tensor):
        items: Any = [("batch", batch)]
    elif isinstance(batch, Mapping):
        items = batch.items()
    elif isinstance(batch, (list, tuple)):
        items = enumerate(batch)
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = [(f.name, getattr(batch, f.name, None)) for f in dataclasses.fields(batch)]
    else:
        items = vars(batch).items() if hasattr(batch, "__dict__") else [("batch", batch)]
    for key, value in items:
        for t in tensors_in(value, objects=True):
            if t.is_floating_point() and not all_finite(t):
                return str(key), bad_rows(t, batch_size)
    return None


def bad_rows(t: Tensor, batch_size: int | None) -> list[int] | None:
    """Batch rows (dim 0) that hold a non-finite value, when dim 0 is the batch."""
    if batch_size is None or t.dim() == 0 or t.shape[0] != batch_size:
        return None
    bad = ~torch.isfinite(t.detach()).reshape(batch_size, -1).all(dim=1)
    return [int(i) for i in bad.nonzero().flatten().tolist()]


def max_finite_abs(t: Tensor) -> float:
    if t.numel() == 0:
        return 0.0
    a = t.detach().abs().float()
    return float(torch.where(torch.isfinite(a), a, torch.zeros_like(a)).max())


def all_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


def to_float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(to_float32(v) for v in value)
    if isinstance(value, list):
        return [to_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    return value


def dtype_name(t: Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def rows_text(rows: list[int] | None) -> str:
    if rows is None:
        return "unknown"
    shown = ", ".join(str(r) for r in rows[:ROWS_SHOWN])
    return f"[{shown}{', ...' if len(rows) > ROWS_SHOWN else ''}]"


def batch_size_of(batch: Any, sample_ids: Any) -> int | None:
    """Rows in the batch: the sample identities' length, else dim 0 of its first tensor."""
    if isinstance(sample_ids, Tensor) and sample_ids.dim() == 1:
        return int(sample_ids.shape[0])
    if isinstance(sample_ids, (list, tuple)):
        return len(sample_ids)
    first = next(tensors_in(batch, objects=True), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None


def id_list(ids: Any) -> list[Any] | None:
    """Sample identities as a plain list (a 1-D tensor, a list or a tuple), else ``None``."""
    if hasattr(ids, "tolist") and getattr(ids, "dim", lambda: 2)() <= 1:
        return ids.reshape(-1).tolist()
    if isinstance(ids, (list, tuple)):
        return list(ids)
    return None


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
