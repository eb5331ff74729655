"""What ranks and shards change: which strategies shard, on how many ranks each element lives (so the ranks' summed squares
are the unsharded norm's square), a replay through them, and which rank carried a trip (gathered only when a step trips).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor

from .decide import FLAG_NAMES
from .provenance import FINITE, SPIKE, UNAVAILABLE, Provenance
from .tensors import DTensor, FSDPModule, Replicate

FSDP, FSDP2 = "fsdp", "fsdp2"


def sharding_of(trainer: pl.Trainer) -> str | None:
    """``"fsdp"``, ``"fsdp2"``, or ``None`` when each rank holds whole gradients (single device, DDP)."""
    if isinstance(trainer.strategy, FSDPStrategy):
        return FSDP
    if isinstance(trainer.strategy, ModelParallelStrategy):
        return FSDP2
    return None


def copies(t: Tensor, world: int, plain_copies: int) -> int:
    """On how many ranks each element of ``t`` lives (``plain_copies`` for a tensor that is not a DTensor)."""
    if DTensor is None or not isinstance(t, DTensor):
        return plain_copies
    mesh = t.device_mesh
    replicated = 1
    for dim, placement in enumerate(t.placements):
        if isinstance(placement, Replicate):
            replicated *= mesh.size(dim)
    return max(1, world // max(1, mesh.size())) * replicated


def summed_squares(norms: Tensor, tensors: Sequence[Tensor], world: int, plain_copies: int) -> Tensor:
    """This rank's share of the unsharded squared norm: each local norm squared, divided by its copies, summed.
    Summed over ranks it is the square of the whole model's norm. ``norms[i]`` is the local norm of ``tensors[i]``."""
    counts = [copies(t, world, plain_copies) for t in tensors]
    squares = norms.float() * norms.float()
    if all(c == 1 for c in counts):
        return squares.sum()
    weights = torch.tensor([1.0 / c for c in counts], dtype=torch.float32, device=norms.device)
    return (squares * weights).sum()


def plain_copies_of(sharding: str | None, world: int) -> int:
    """Under FSDP every parameter is a flat shard (one copy); under FSDP2 a plain tensor is on every rank."""
    return world if sharding == FSDP2 else 1


def training_step_through(trainer: pl.Trainer, training_step: Callable[[Any, int], Any]) -> Callable[[Any, int], Any]:
    """The forward-only replay step of a sharded run, which every rank runs at the same trip (the forward gathers
    weights with collectives). FSDP: through the FSDP root, as the strategy calls it, so the root gathers; FSDP2:
    ``training_step`` itself, as the strategy calls it (the fully-sharded submodules gather in their hooks)."""
    strategy = trainer.strategy

    def step(batch: Any, batch_idx: int) -> Any:
        with torch.no_grad():
            if isinstance(strategy, FSDPStrategy):
                return strategy._forward_redirection(
                    strategy.model, strategy.lightning_module, "training_step", batch, batch_idx
                )
            try:
                return training_step(batch, batch_idx)
            finally:
                reshard(strategy.lightning_module)

    return step


def reshard(module: torch.nn.Module) -> None:
    """Put FSDP2's sharded parameters back in every fully-sharded module. FSDP2 keeps its root's weights gathered
    after a forward, for the backward that follows; a replay has no backward, so without this the next step would
    run on the weights gathered before a rollback restored the shards."""
    if FSDPModule is None:  # pragma: no cover
        return
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


_FLAG_WORDS = {
    "loss_nan": "loss nan",
    "loss_inf": "loss inf",
    "empty_batch": "batch without targets",
    "grad_nan": "gradients nan",
    "grad_inf": "gradients inf",
    "params_nonfinite_before": "weights non-finite",
    "params_nonfinite_after_prev_step": "weights non-finite after the previous update",
}


def own_view(
    rank: int, local_flags: list[float] | None, provenance: Provenance | None, loss: float | None, grad_norm: float,
    report_name: str,
) -> dict[str, Any]:
    """This rank's facts about the step: its local flags, what its replay found, its own loss and grad norm."""
    flags = [name for name, value in zip(FLAG_NAMES, local_flags or []) if value]
    found = None
    if provenance is not None and provenance.status not in (FINITE, UNAVAILABLE, SPIKE):
        found = provenance.summary()
    return {"rank": rank, "flags": flags, "found": found, "loss": loss, "grad_norm": grad_norm, "report": report_name}


def gather_views(view: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's ``own_view``, in rank order (one ``all_gather_object``); None on a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    views: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(views, view)
    return views


# Under DDP the gradients are averaged across ranks in backward, so a non-finite gradient shows on every rank:
# it names the ranks that carried a fault only when no rank has more direct evidence.
_SHARED = {"grad_nan", "grad_inf"}


def carriers(views: list[dict[str, Any]]) -> list[int]:
    """Ranks that saw the fault in their own values: a non-finite loss, an empty batch, broken weights, or a replay
    that found a non-finite value; failing those, the ranks whose gradients were non-finite."""
    direct = [v["rank"] for v in views if set(v["flags"]) - _SHARED or v["found"]]
    return direct or [v["rank"] for v in views if v["flags"]]


def rank_clause(views: list[dict[str, Any]] | None, rank: int, spike: bool) -> str | None:
    """The message's clause on ranks: who carried the fault, and for a rank that did not, where to read about it.
    For a finite spike, every rank's own loss and gradient norm (the rule judged their mean)."""
    if not views:
        return None
    if spike:
        values = ", ".join(f"rank {v['rank']} loss {_num(v['loss'])} grad norm {_num(v['grad_norm'])}" for v in views)
        return f"per rank: {values}"
    carried = carriers(views)
    if not carried:
        return "no rank saw it in its own values (a fault of the collective itself?)"
    if rank in carried:
        others = [r for r in carried if r != rank]
        return f"carried by this rank (rank {rank})" + (f" and rank(s) {others}" if others else "")
    first = next(v for v in views if v["rank"] == carried[0])
    what = "; ".join(_FLAG_WORDS.get(f, f) for f in first["flags"] if f not in _SHARED) or "its replay"
    pointer = f"carried by rank {first['rank']} ({what}; its report {first['report']}"
    pointer += f": {first['found']})" if first["found"] else ")"
    return f"this rank's own loss and weights were finite; {pointer}"


def _num(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
