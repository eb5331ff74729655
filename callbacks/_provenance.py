"""Where a non-finite value started: replay the failing batch once, with temporary hooks on every submodule.

Runs only after a trip, so healthy steps pay nothing: no hook exists outside :func:`replay`. The replay goes
through the module's own ``training_step`` under the caller's precision context, on the weights the step failed
with, and then puts back everything it could have touched (RNG streams, buffers, attributes that
``training_step`` rebinds; ``.grad`` is never written because the backward is ``torch.autograd.grad``). It
issues no collective: ``self.log`` is silenced and the DDP wrapper is bypassed, so under DDP each rank replays
its own batch while the decision stays collective.

What it names, in the order a value travels:

* a non-finite value already in the batch (key and rows);
* the first module whose forward output is non-finite (children finish before their parents, so the first
  hook to see one is the innermost culprit), with its dtype, whether its inputs were finite, the largest finite
  input magnitude, and for a 16-bit output the magnitude it reaches when recomputed in float32;
* a loss that turns non-finite after every module output was finite (the loss code in ``training_step``);
* the first module, in backward order, whose backward turns a finite gradient non-finite: a gradient w.r.t.
  one of its inputs or parameters that is non-finite while the gradient of its output was finite;
* nothing: the replay was finite, a transient fault.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

HALF_MAX = {"float16": torch.finfo(torch.float16).max, "bfloat16": torch.finfo(torch.bfloat16).max}
_ROWS_SHOWN = 16

# status values (stable strings: tests and report readers match on them)
IN_BATCH = "batch"
FORWARD = "forward"
FORWARD_INPUT = "forward_input"
LOSS = "loss"
BACKWARD = "backward"
FINITE = "finite"
UNAVAILABLE = "unavailable"


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
        if self.status in (FINITE, UNAVAILABLE):
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


@dataclass
class RecordedBatch:
    """A micro-batch of the current accumulation window, kept (by reference) in case the step trips."""

    batch: Any
    batch_idx: int
    rng_cpu: Tensor
    rng_cuda: Tensor | None


def record(batch: Any, batch_idx: int) -> RecordedBatch:
    """Remember ``batch`` and the RNG state its ``training_step`` will start from (dropout masks replay too)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return RecordedBatch(batch, batch_idx, torch.get_rng_state(), cuda)


# ---------------------------------------------------------------------------------------------------- replay
def replay(
    module: nn.Module,
    recorded: RecordedBatch,
    *,
    training_step: Callable[[Any, int], Any],
    precision_context: Callable[[], contextlib.AbstractContextManager[Any]],
    loss_multiplier: float,
    batch_size: int | None,
) -> Provenance:
    """Replay one micro-batch through ``training_step`` with hooks; name where the first non-finite value appeared.

    ``loss_multiplier`` reproduces what the trainer did to the loss before backward (loss-scaler scale divided by
    the accumulation factor), so a backward overflow under fp16 happens again at the same place.
    """
    bad_input = nonfinite_in_batch(recorded.batch, batch_size)
    if bad_input is not None:
        key, rows = bad_input
        return Provenance(IN_BATCH, rows=rows, batch_idx=recorded.batch_idx, detail=f"key {key!r}, rows {_rows(rows)}")
    tracer = _Tracer(module, batch_size)
    with preserved(module, recorded), tracer.installed():
        with precision_context():
            loss = loss_of(training_step(recorded.batch, recorded.batch_idx))
        found = tracer.forward_finding
        if found is None:
            found = _judge_loss(loss, tracer.max_output)
        if found is None and loss is not None:
            params = [p for p in module.parameters() if p.requires_grad]
            if params and loss.requires_grad:
                torch.autograd.grad(loss * loss_multiplier, params, allow_unused=True)
            found = tracer.backward_finding
    if tracer.unhooked and found is not None:
        found.detail = (found.detail + "; " if found.detail else "") + f"not hooked (TorchScript): {', '.join(tracer.unhooked[:5])}"
    if found is None:
        found = Provenance(
            FINITE,
            detail="replay of this batch on the same weights was finite: a transient fault (hardware, a race, "
            "or code the replay does not run, e.g. hooks or another rank's batch)",
        )
    found.batch_idx = recorded.batch_idx
    return found


def per_sample_losses(
    module: nn.Module,
    recorded: RecordedBatch,
    compute: Callable[[Any], Tensor],
    precision_context: Callable[[], contextlib.AbstractContextManager[Any]],
) -> list[float]:
    """The module's own per-sample losses for a recorded batch, with the same state protection as the replay."""
    with preserved(module, recorded), precision_context(), torch.no_grad():
        values = compute(recorded.batch)
    return [float(v) for v in values.detach().float().reshape(-1).tolist()]


def _judge_loss(loss: Tensor | None, max_output: float) -> Provenance | None:
    if loss is None:
        return Provenance(UNAVAILABLE, detail="provenance unavailable: training_step returned no loss on replay")
    if bool(torch.isfinite(loss.detach()).all()):
        return None
    return Provenance(LOSS, dtype=_dtype_name(loss), detail=f"every module output finite, max |output| {max_output:.2g}")


def loss_of(output: Any) -> Tensor | None:
    """The loss a ``training_step`` returned: a tensor, or a mapping's ``"loss"``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    return None


# ------------------------------------------------------------------------------------------- state protection
@contextlib.contextmanager
def preserved(module: nn.Module, recorded: RecordedBatch) -> Iterator[None]:
    """Run with the recorded RNG state and eager code, and put back RNG, buffers and rebound attributes after.

    ``self.log`` is silenced: a logged value with ``sync_dist=True`` would be a collective that other ranks do not
    issue, and the replay's values must not reach the logger. In-place changes to Python containers that
    ``training_step`` makes are not undone (only rebinding of the module's own attributes is).
    """
    attributes = dict(vars(module))
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    python_rng = random.getstate()
    devices = [torch.cuda.current_device()] if recorded.rng_cuda is not None else []
    with torch.random.fork_rng(devices=devices), _eager(), torch.enable_grad():
        torch.set_rng_state(recorded.rng_cpu)
        if recorded.rng_cuda is not None:
            torch.cuda.set_rng_state(recorded.rng_cuda)
        for name in ("log", "log_dict"):
            if hasattr(module, name):
                object.__setattr__(module, name, _silent)
        try:
            yield
        finally:
            random.setstate(python_rng)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            state = vars(module)
            for key in [k for k in state if k not in attributes]:
                del state[key]
            for key, value in attributes.items():
                if state.get(key) is not value:
                    state[key] = value


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled code would recompile for the hooks (or skip them): run the replay eagerly."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------- tracing
class _Tracer:
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
                label = name or self.root_name
                try:
                    self._handles.append(sub.register_forward_hook(partial(self._on_forward, label), with_kwargs=True))
                except RuntimeError:  # TorchScript modules take no hooks: traced around, not into
                    self.unhooked.append(label)
                    continue
                for pname, param in sub.named_parameters(recurse=False):
                    if param.requires_grad:
                        qualified = f"{name}.{pname}" if name else pname
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
        bad = [t for t in outputs if not _all_finite(t)]
        if not bad:
            self.max_output = max([self.max_output] + [max_finite_abs(t) for t in outputs])
            return
        inputs_finite = all(_all_finite(t) for t in inputs)
        culprit = bad[0] if inputs_finite else next(t for t in inputs if not _all_finite(t))
        self.forward_finding = Provenance(
            FORWARD if inputs_finite else FORWARD_INPUT,
            module=name,
            where="forward output" if inputs_finite else "forward input",
            dtype=_dtype_name(bad[0]),
            inputs_finite=inputs_finite,
            max_abs_before=max([max_finite_abs(t) for t in inputs], default=None),
            float32_max_abs=self._float32_magnitude(sub, args, kwargs, bad[0]) if inputs_finite else None,
            weight_max_abs=max([max_finite_abs(p) for p in sub.parameters(recurse=False)], default=None),
            rows=bad_rows(culprit, self.batch_size),
        )

    def _float32_magnitude(self, sub: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> float | None:
        """Recompute a 16-bit output in float32: "7.1e4 in float32" shows an overflow of float16's 65504."""
        if _dtype_name(out) not in HALF_MAX:
            return None
        self._recomputing = True
        try:
            with torch.autocast(out.device.type, enabled=False), torch.no_grad():
                result = sub(*_to_float32(args), **_to_float32(kwargs))
            values = [max_finite_abs(t) for t in floating_tensors(result)]
            return max(values) if values and all(_all_finite(t) for t in floating_tensors(result)) else None
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
        if _all_finite(grad):
            self._finite_output_grads.update(name for name, role in roles if role == "output")
            self.max_grad = max(self.max_grad, max_finite_abs(grad))
            return
        # the modules that consume this tensor made its gradient; one whose own output gradient was finite did it
        consumers = [name for name, role in roles if role == "input" and name in self._finite_output_grads]
        if consumers:
            module, where = _deepest(consumers), "backward: gradient w.r.t. its input"
        else:
            producers = [name for name, role in roles if role == "output"] or [self.root_name]
            module = _deepest(producers)
            where = "output gradient (made by code outside any submodule that uses this output)"
        self.backward_finding = self._grad_finding(module, where, grad)

    def _on_param_grad(self, module: str, param: str, grad: Tensor) -> None:
        if self.backward_finding is None and not _all_finite(grad):
            self.backward_finding = self._grad_finding(module, f"backward: gradient of {param}", grad)

    def _grad_finding(self, module: str, where: str, grad: Tensor) -> Provenance:
        return Provenance(
            BACKWARD,
            module=module,
            where=where,
            dtype=_dtype_name(grad),
            max_abs_before=self.max_grad,
            rows=bad_rows(grad, self.batch_size),
        )


# ---------------------------------------------------------------------------------------------- tensor facts
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
    if isinstance(batch, Mapping):
        items: Any = batch.items()
    elif isinstance(batch, (list, tuple)):
        items = enumerate(batch)
    else:
        items = vars(batch).items() if hasattr(batch, "__dict__") else [("batch", batch)]
    for key, value in items:
        for t in tensors_in(value, objects=True):
            if t.is_floating_point() and not _all_finite(t):
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


def _all_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


def _deepest(names: list[str]) -> str:
    """The most nested of several modules (the first one on ties): the innermost is the most specific answer."""
    return max(names, key=lambda n: n.count("."))


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _rows(rows: list[int] | None) -> str:
    if rows is None:
        return "unknown"
    shown = ", ".join(str(r) for r in rows[:_ROWS_SHOWN])
    return f"[{shown}{', ...' if len(rows) > _ROWS_SHOWN else ''}]"


def batch_size_of(batch: Any, sample_ids: Any) -> int | None:
    """Rows in the batch: the sample identities' length, else dim 0 of its first tensor."""
    if isinstance(sample_ids, Tensor) and sample_ids.dim() == 1:
        return int(sample_ids.shape[0])
    if isinstance(sample_ids, (list, tuple)):
        return len(sample_ids)
    first = next(tensors_in(batch, objects=True), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None

