"""What a sharded strategy changes for the health check: which strategies shard, how many ranks hold each element
of a tensor (so that the ranks' summed squares are the unsharded norm's square), and how a replay runs through them.

FSDP (``FSDPStrategy``) keeps flat shards: every element of a parameter lives on exactly one rank. FSDP2
(``ModelParallelStrategy``) keeps DTensors: an element lives on every rank of the dimensions its placement
replicates over, and on every rank outside its mesh; a plain tensor there is a full copy on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor

try:  # torch builds without distributed support have no DTensor; nothing is sharded there
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - such builds are not tested here
    DTensor = Replicate = FSDPModule = None  # type: ignore[assignment,misc]

FSDP, FSDP2 = "fsdp", "fsdp2"


def sharding_of(trainer: pl.Trainer) -> str | None:
    """``"fsdp"``, ``"fsdp2"``, or ``None`` when each rank holds whole gradients (single device, DDP)."""
    if isinstance(trainer.strategy, FSDPStrategy):
        return FSDP
    if isinstance(trainer.strategy, ModelParallelStrategy):
        return FSDP2
    return None


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, ``t`` itself otherwise."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


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
