"""In-memory snapshots of trainable parameters and their optimiser state, for skip and rollback.

Only ``optimizer.state`` (per-parameter moments, step counters) is captured - never ``param_groups``: learning
rates belong to the LR scheduler, which keeps advancing, and restoring an old ``lr`` would desynchronise
chainable schedulers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


@dataclass
class Snapshot:
    step: int
    params: list[Tensor]
    # per parameter: its optimiser state (``None`` = the optimiser had no state for it yet)
    opt_state: list[dict[str, Any] | None]


@torch.no_grad()
def take(
    params: Sequence[Tensor],
    optimizer: Optimizer,
    step: int,
    device: torch.device | None = None,
    reuse: Snapshot | None = None,
) -> Snapshot:
    """Copy ``params`` and their optimiser state. ``reuse``'s buffers are overwritten in place when shapes match,
    so snapshotting every step does not allocate every step."""
    if reuse is not None and len(reuse.params) == len(params):
        saved = [_copy_into(buf, p, device) for buf, p in zip(reuse.params, params)]
    else:
        saved = [_clone(p, device) for p in params]
    states: list[dict[str, Any] | None] = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p)
        if not state:
            states.append(None)
            continue
        old = reuse.opt_state[i] if reuse is not None and i < len(reuse.opt_state) else None
        states.append({k: _copy_state_value(v, (old or {}).get(k), device) for k, v in state.items()})
    return Snapshot(step=step, params=saved, opt_state=states)


@torch.no_grad()
def restore(snapshot: Snapshot, params: Sequence[Tensor], optimizer: Optimizer) -> None:
    """Write ``snapshot`` back into ``params`` (in place, so DDP/optimiser references stay valid) and their state."""
    if len(snapshot.params) != len(params):
        raise RuntimeError("snapshot does not match the optimiser's parameters")
    for p, saved in zip(params, snapshot.params):
        p.copy_(saved.to(device=p.device, dtype=p.dtype, non_blocking=True))
    for p, saved_state in zip(params, snapshot.opt_state):
        if saved_state is None:
            optimizer.state.pop(p, None)
            continue
        current = optimizer.state.get(p) or {}
        restored: dict[str, Any] = {}
        for k, v in saved_state.items():
            cur = current.get(k)
            if isinstance(v, Tensor):
                if isinstance(cur, Tensor) and cur.shape == v.shape and cur.dtype == v.dtype:
                    cur.copy_(v.to(cur.device, non_blocking=True))
                    restored[k] = cur
                else:
                    restored[k] = v.to(_home_device(cur, v, p), copy=True)
            else:
                restored[k] = copy.deepcopy(v)
        optimizer.state[p] = restored


def _clone(t: Tensor, device: torch.device | None) -> Tensor:
    return t.detach().to(device or t.device, copy=True)


def _copy_into(buf: Tensor, src: Tensor, device: torch.device | None) -> Tensor:
    if buf.shape == src.shape and buf.dtype == src.dtype and buf.device == (device or src.device):
        return buf.copy_(src.detach())
    return _clone(src, device)


def _copy_state_value(value: Any, old: Any, device: torch.device | None) -> Any:
    if isinstance(value, Tensor):
        # scalar state (e.g. Adam's "step" on CPU) stays where the optimiser keeps it
        target = device if value.dim() > 0 else value.device
        if isinstance(old, Tensor):
            return _copy_into(old, value, target)
        return _clone(value, target)
    return copy.deepcopy(value)


def _home_device(current: Any, saved: Tensor, param: Tensor) -> torch.device:
    if isinstance(current, Tensor):
        return current.device
    # scalars were snapshotted where the optimiser keeps them; the rest lives with the parameter
    return saved.device if saved.dim() == 0 else param.device
