"""Which rank carried a trip: every rank's own view of the step, gathered when (and only when) a step trips.

The decision is collective (one all-reduce of counts), so every rank stops at the same step; but a rank whose own
loss, gradients and weights were finite must not report the fault as its own. At a trip every rank is in the same
hook at the same step, so one ``all_gather_object`` there collects each rank's local flags and what its replay
found; the message of each rank then says which rank carried it and, on the others, points to that rank's report.
Healthy steps pay nothing beyond keeping the step's local flags on the device (no read-back).
"""

from __future__ import annotations

import math
from typing import Any

import torch.distributed as dist

from .decide import FLAG_NAMES
from .provenance import FINITE, SPIKE, UNAVAILABLE, Provenance

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
