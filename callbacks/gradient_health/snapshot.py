"""What skip and rollback put back: trainable parameters with their optimiser state (``Snapshot``), and the buffers and
carried attributes as they were before the step's first forward (``StepStart``). Why not ``param_groups``: docs/design.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .tensors import all_finite, tensors_in

_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks...


@dataclass
class Snapshot:
    step: int
    targets: list[Tensor]  # the parameters saved (restored into these, whatever trains by then)
    params: list[Tensor]
    # per parameter: its optimiser state (``None`` = the optimiser had no state for it yet)
    opt_state: list[dict[str, Any] | None]
    buffers: dict[str, Tensor] = field(default_factory=dict)  # qualified name -> value before the step's forward


@torch.no_grad()
def take(
    params: Sequence[Tensor],
    optimizer: Optimizer,
    step: int,
    device: torch.device | None = None,
    reuse: Snapshot | None = None,
    buffers: dict[str, Tensor] | None = None,
) -> Snapshot:
    """Copy ``params`` and their optimiser state (and ``buffers``, the values a :class:`StepStart` kept).
    ``reuse``'s storage is overwritten in place when it holds the same parameters, so snapshotting every step
    does not allocate every step."""
    same = reuse is not None and len(reuse.targets) == len(params) and all(a is b for a, b in zip(reuse.targets, params))
    if same:
        assert reuse is not None
        saved = [_copy_into(buf, p, device) for buf, p in zip(reuse.params, params)]
    else:
        saved = [_clone(p, device) for p in params]
    states: list[dict[str, Any] | None] = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p)
        if not state:
            states.append(None)
            continue
        old = reuse.opt_state[i] if same and reuse is not None else None
        states.append({k: _copy_state_value(v, (old or {}).get(k), device) for k, v in state.items()})
    kept = {name: _clone(value, None) for name, value in (buffers or {}).items()}
    return Snapshot(step=step, targets=list(params), params=saved, opt_state=states, buffers=kept)


@torch.no_grad()
def restore(snapshot: Snapshot, optimizer: Optimizer, module: nn.Module | None = None) -> None:
    """Write ``snapshot`` back into the parameters it saved (in place, so DDP/optimiser references stay valid),
    their optimiser state, and ``module``'s buffers."""
    for p, saved in zip(snapshot.targets, snapshot.params):
        p.copy_(saved.to(device=p.device, dtype=p.dtype, non_blocking=True))
    for p, saved_state in zip(snapshot.targets, snapshot.opt_state):
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
    if module is not None:
        write_buffers(module, snapshot.buffers)


class StepStart:
    """The module's state outside the optimiser as it was before the step's first forward.

    Buffers: those of submodules in training mode, copied with one fused kernel per step, except the ones seen
    unchanged over a training step (constant tables, masks), which are then left alone. Attributes: a shallow copy
    of the module's own ``__dict__`` (references: ``training_step`` rebinds a carried hidden state, it does not
    overwrite it)."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, nn.Module, str]] = []  # (qualified name, owner, name in the owner)
        self._constant: set[int] = set()
        self._unsettled: set[int] = set()
        self._kept: list[int] = []
        self._copies: dict[int, Tensor] = {}
        self.attributes: dict[str, Any] = {}
        self.open = False  # captured, and the step's optimisers have not all stepped yet

    def bind(self, module: nn.Module) -> None:
        self._entries = [
            (f"{prefix}.{name}" if prefix else name, owner, name)
            for prefix, owner in module.named_modules()
            for name, value in owner._buffers.items()
            if value is not None
        ]
        self._constant.clear()
        self._unsettled = set(range(len(self._entries)))
        self._copies.clear()
        self.open = False

    @torch.no_grad()
    def capture(self, module: nn.Module) -> None:
        """Before the step's first forward: copy the buffers that may change, reference the attributes."""
        self.attributes = dict(vars(module))
        self._kept = [i for i, (_, owner, _) in enumerate(self._entries) if owner.training and i not in self._constant]
        sources, targets = [], []
        for i in self._kept:
            value = self._buffer(i)
            held = self._copies.get(i)
            if held is None or held.shape != value.shape or held.dtype != value.dtype or held.device != value.device:
                self._copies[i] = value.detach().clone()
            else:
                sources.append(value)
                targets.append(held)
        if targets:
            torch._foreach_copy_(targets, sources)
        self.open = True

    def changed_floating(self) -> list[tuple[str, Tensor]]:
        """The floating buffers that may have changed in this step (to check for non-finite values); settles,
        once per buffer, whether a buffer changes at all."""
        if self._unsettled:
            self._settle()
        return [(self._entries[i][0], b) for i in self._kept if (b := self._buffer(i)).is_floating_point()]

    def _settle(self) -> None:
        for i in [i for i in self._kept if i in self._unsettled]:
            self._unsettled.discard(i)
            if torch.equal(self._buffer(i), self._copies[i]):
                self._constant.add(i)

    @torch.no_grad()
    def restore(self, module: nn.Module) -> list[str]:
        """Put back the buffers and the non-finite carried attributes; returns each such attribute with what was
        done about it."""
        for i in self._kept:
            if i in self._copies:
                self._buffer(i).copy_(self._copies[i])
        return [f"{name} ({note})" for name, note in nonfinite_attributes(module, self.attributes)]

    def kept_buffers(self) -> dict[str, Tensor]:
        """Qualified name -> the value before the step's first forward."""
        return {self._entries[i][0]: self._copies[i] for i in self._kept if i in self._copies}

    def _buffer(self, i: int) -> Tensor:
        _, owner, name = self._entries[i]
        return owner._buffers[name]  # type: ignore[return-value]


def write_buffers(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Copy saved buffer values back into ``module``'s buffers of those names (in place)."""
    if not values:
        return
    buffers = dict(module.named_buffers())
    with torch.no_grad():
        for name, value in values.items():
            target = buffers.get(name)
            if target is not None and target.shape == value.shape:
                target.copy_(value)


def nonfinite_attributes(module: nn.Module, before: dict[str, Any]) -> list[tuple[str, str]]:
    """The module's own attributes (not parameters, buffers or submodules) that hold a non-finite tensor; each
    is put back to its value from before the step when that one was finite. Returns (name, what was done)."""
    out = []
    state = vars(module)
    for name, value in list(state.items()):
        if name in _MODULE_INTERNALS or isinstance(value, nn.Module) or not _has_nonfinite(value):
            continue
        old = before.get(name)
        if old is not None and old is not value and not _has_nonfinite(old):
            state[name] = old
            out.append((name, "put back to its value before the step"))
        else:
            out.append((name, "non-finite before the step too: reset it in the module's reset_state()"))
    return out


def saved_tensors(module: nn.Module, optimizers: list[Optimizer]) -> list[Tensor]:
    """What a checkpoint saves that can be non-finite: every floating parameter, buffer and optimiser state."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, Tensor) and v.is_floating_point() and v.numel())
    return tensors


def nonfinite_names(module: nn.Module, optimizers: list[Optimizer]) -> list[str]:
    """Names of the non-finite tensors a checkpoint would save (read on the host: after a trip only)."""
    names = [name for name, t in (*module.named_parameters(), *module.named_buffers())
             if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    for i, optimizer in enumerate(optimizers):
        for state in optimizer.state.values():
            if any(isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
                   for v in state.values()):
                names.append(f"optimizer {i} state")
                break
    return names


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.is_floating_point() and not all_finite(value)
    if not isinstance(value, (tuple, list, dict)):
        return False
    return any(t.is_floating_point() and not all_finite(t) for t in tensors_in(value))


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
