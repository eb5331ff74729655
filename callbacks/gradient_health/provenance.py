"""The answer of a replay (``Provenance``: where the first non-finite value appeared, in words a trip message can quote)
and the hooks that find it (``Tracer``), kept apart so that the report reads an answer without knowing how it was found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .tensors import all_finite, bad_rows, dtype_name, floating_tensors, max_finite_abs, to_float32, user_path

HALF_MAX = {"float16": torch.finfo(torch.float16).max, "bfloat16": torch.finfo(torch.bfloat16).max}

# status values (stable strings: tests and report readers match on them)
IN_BATCH = "batch"
FORWARD = "forward"
FORWARD_INPUT = "forward_input"
LOSS = "loss"
BACKWARD = "backward"
FINITE = "finite"
UNAVAILABLE = "unavailable"
SPIKE = "spike"  # not a non-finite value: the samples of a finite spike (no replay with hooks)


@dataclass
class Provenance:
    """The answer to "where did the first non-finite value appear?" for one replayed batch."""

    status: str
    module: str | None = None
    where: str | None = None  # e.g. "forward output", "gradient w.r.t. its input", "gradient of head.weight"
    dtype: str | None = None
    inputs_finite: bool | None = None
    max_abs_before: float | None = None  # largest finite magnitude seen just before (inputs, or gradients so far)
    float32_max_abs: float | None = None  # a 16-bit forward output recomputed in float32
    weight_max_abs: float | None = None  # the module's own weights, for a 16-bit output (autocast casts them)
    rows: list[int] | None = None  # batch rows that carried the non-finite values
    batch_idx: int | None = None
    detail: str = ""
    samples: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One clause for the trip message, e.g. ``first non-finite: encoder.1 forward output (float16, ...)``."""
        if self.status in (FINITE, UNAVAILABLE, SPIKE):
            return self.detail
        if self.status == IN_BATCH:
            return f"first non-finite: in the batch itself ({self.detail})"
        if self.status == LOSS:
            return f"first non-finite: the loss in training_step ({self.detail})"
        facts = [self.dtype or "?"]
        if self.status in (FORWARD, FORWARD_INPUT):
            facts.append("inputs finite" if self.inputs_finite else "inputs non-finite")
            if self.max_abs_before is not None:
                facts.append(f"max |x| before {self.max_abs_before:.2g}")
            if self.float32_max_abs is not None:
                facts.append(f"{self.float32_max_abs:.2g} when recomputed in float32")
            if self._weights_overflow():
                facts.append(f"max |w| {self.weight_max_abs:.2g}")
        elif self.max_abs_before is not None:
            facts.append(f"max |grad| before {self.max_abs_before:.2g}")
        return f"first non-finite: {self.module} {self.where} ({', '.join(facts)})"

    def _weights_overflow(self) -> bool:
        limit = HALF_MAX.get(self.dtype or "")
        return limit is not None and self.weight_max_abs is not None and self.weight_max_abs > limit

    def advice(self) -> str | None:
        """A fix aimed at the culprit, or ``None`` when only the generic advice applies."""
        limit = HALF_MAX.get(self.dtype or "")
        if self.status == IN_BATCH:
            return "the batch holds non-finite values: clean or filter those records"
        if self.status == FORWARD and self._weights_overflow():
            return (
                f"{self.module}'s weights (max |w| {self.weight_max_abs:.2g}) exceed the {self.dtype} range ({limit:g})"
                " that autocast casts them to: find what grew them (learning rate, a bad checkpoint, weight surgery),"
                " or use bf16-mixed"
            )
        if self.status == FORWARD and limit is not None and (self.float32_max_abs or 0.0) > limit:
            return (
                f"{self.module}'s output exceeds the {self.dtype} range ({limit:g}): use bf16-mixed or 32-true, "
                f"or run {self.module} in float32"
            )
        if self.status == FORWARD:
            return f"{self.module}'s forward makes non-finite values from finite inputs: look there for 0/0, log(0), sqrt(<0)"
        if self.status == FORWARD_INPUT:
            return f"the inputs of {self.module} are made non-finite by code outside any submodule: look there"
        if self.status == LOSS:
            return "every module output is finite: look at the loss code in training_step (log(0), 0/0, empty means)"
        if self.status == BACKWARD:
            return (
                f"{self.module}'s backward turns finite gradients non-finite: look for sqrt/norm/division at 0 in its "
                "forward, or a gradient too large for its dtype"
            )
        return None


class Tracer:
    """Forward hooks on every submodule and gradient hooks on what they produce and consume, for one replay."""

    def __init__(self, root: nn.Module, batch_size: int | None) -> None:
        self.root = root
        self.batch_size = batch_size
        self.root_name = type(root).__name__
        self.forward_finding: Provenance | None = None
        self.backward_finding: Provenance | None = None
        self.max_output = 0.0
        self.max_grad = 0.0
        self._handles: list[Any] = []
        self._roles: dict[int, tuple[Tensor, list[tuple[str, str]]]] = {}
        self._finite_output_grads: set[str] = set()
        self._recomputing = False
        self.unhooked: list[str] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        try:
            for name, sub in self.root.named_modules():
                label = user_path(name) or self.root_name
                try:
                    self._handles.append(sub.register_forward_hook(partial(self._on_forward, label), with_kwargs=True))
                except RuntimeError:  # TorchScript modules take no hooks: traced around, not into
                    self.unhooked.append(label)
                    continue
                for pname, param in sub.named_parameters(recurse=False):
                    if param.requires_grad:
                        qualified = user_path(f"{name}.{pname}" if name else pname)
                        self._handles.append(param.register_hook(partial(self._on_param_grad, label, qualified)))
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._roles.clear()

    # forward -----------------------------------------------------------------------------------------------
    def _on_forward(self, name: str, sub: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._recomputing or self.forward_finding is not None:
            return
        outputs = floating_tensors(output)
        inputs = floating_tensors((args, kwargs))
        for t in outputs:
            self._watch(t, name, "output")
        for t in inputs:
            self._watch(t, name, "input")
        bad = [t for t in outputs if not all_finite(t)]
        if not bad:
            self.max_output = max([self.max_output] + [max_finite_abs(t) for t in outputs])
            return
        inputs_finite = all(all_finite(t) for t in inputs)
        culprit = bad[0] if inputs_finite else next(t for t in inputs if not all_finite(t))
        self.forward_finding = Provenance(
            FORWARD if inputs_finite else FORWARD_INPUT,
            module=name,
            where="forward output" if inputs_finite else "forward input",
            dtype=dtype_name(bad[0]),
            inputs_finite=inputs_finite,
            max_abs_before=max([max_finite_abs(t) for t in inputs], default=None),
            float32_max_abs=self._float32_magnitude(sub, args, kwargs, bad[0]) if inputs_finite else None,
            weight_max_abs=max([max_finite_abs(p) for p in sub.parameters(recurse=False)], default=None),
            rows=bad_rows(culprit, self.batch_size),
        )

    def _float32_magnitude(self, sub: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> float | None:
        """Recompute a 16-bit output in float32: "7.1e4 in float32" shows an overflow of float16's 65504."""
        if dtype_name(out) not in HALF_MAX:
            return None
        self._recomputing = True
        try:
            with torch.autocast(out.device.type, enabled=False), torch.no_grad():
                result = sub(*to_float32(args), **to_float32(kwargs))
            values = [max_finite_abs(t) for t in floating_tensors(result)]
            return max(values) if values and all(all_finite(t) for t in floating_tensors(result)) else None
        except Exception:  # noqa: BLE001 - e.g. float16 weights that refuse float32 inputs: the fact is optional
            return None
        finally:
            self._recomputing = False

    # backward ----------------------------------------------------------------------------------------------
    def _watch(self, t: Tensor, name: str, role: str) -> None:
        if not t.requires_grad:
            return
        entry = self._roles.get(id(t))
        if entry is None or entry[0] is not t:
            roles: list[tuple[str, str]] = []
            self._roles[id(t)] = (t, roles)
            self._handles.append(t.register_hook(partial(self._on_tensor_grad, roles)))
        else:
            roles = entry[1]
        roles.append((name, role))

    def _on_tensor_grad(self, roles: list[tuple[str, str]], grad: Tensor) -> None:
        if self.backward_finding is not None:
            return
        if all_finite(grad):
            self._finite_output_grads.update(name for name, role in roles if role == "output")
            self.max_grad = max(self.max_grad, max_finite_abs(grad))
            return
        # the modules that consume this tensor made its gradient; one whose own output gradient was finite did it
        consumers = [name for name, role in roles if role == "input" and name in self._finite_output_grads]
        if consumers:
            module, where = deepest(consumers), "backward: gradient w.r.t. its input"
        else:
            producers = [name for name, role in roles if role == "output"] or [self.root_name]
            module = deepest(producers)
            where = "output gradient (made by code outside any submodule that uses this output)"
        self.backward_finding = self._grad_finding(module, where, grad)

    def _on_param_grad(self, module: str, param: str, grad: Tensor) -> None:
        if self.backward_finding is None and not all_finite(grad):
            self.backward_finding = self._grad_finding(module, f"backward: gradient of {param}", grad)

    def _grad_finding(self, module: str, where: str, grad: Tensor) -> Provenance:
        return Provenance(
            BACKWARD,
            module=module,
            where=where,
            dtype=dtype_name(grad),
            max_abs_before=self.max_grad,
            rows=bad_rows(grad, self.batch_size),
        )


def deepest(names: list[str]) -> str:
    """The most nested of several modules (the first one on ties): the innermost is the most specific answer."""
    return max(names, key=lambda n: n.count("."))
