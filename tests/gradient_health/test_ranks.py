"""The rank clause of a trip message, by table: who carried the fault, and where a healthy rank should look."""

from __future__ import annotations

import pytest

from callbacks.gradient_health.distributed import carriers, own_view, rank_clause
from callbacks.gradient_health.provenance import FINITE, FORWARD, Provenance

HIDDEN = Provenance(FORWARD, module="hidden", where="forward output", dtype="float32", inputs_finite=True)


def views(*per_rank: tuple[list[float] | None, Provenance | None]) -> list[dict]:
    return [
        own_view(rank, flags, found, loss=0.5 + rank, grad_norm=2.0, report_name=f"report{rank}.json")
        for rank, (flags, found) in enumerate(per_rank)
    ]


HEALTHY = [0.0] * 7
LOSS_NAN = [1.0] + [0.0] * 6


@pytest.mark.parametrize(
    ("table", "rank", "expected"),
    [
        # rank 1's loss went NaN in "hidden"; rank 0's own values were finite and its replay found nothing
        (views((HEALTHY, Provenance(FINITE)), (LOSS_NAN, HIDDEN)), 0,
         "this rank's own loss and weights were finite; carried by rank 1 (loss nan; its report "
         "report1.json: first non-finite: hidden forward output (float32, inputs finite))"),
        (views((HEALTHY, Provenance(FINITE)), (LOSS_NAN, HIDDEN)), 1, "carried by this rank (rank 1)"),
        (views((LOSS_NAN, None), (LOSS_NAN, None)), 0, "carried by this rank (rank 0) and rank(s) [1]"),
        (views((HEALTHY, None), ([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], None)), 0,
         "this rank's own loss and weights were finite; carried by rank 1 (batch without targets; its report report1.json)"),
        (views((HEALTHY, None), (HEALTHY, None)), 0, "no rank saw it in its own values (a fault of the collective itself?)"),
        # DDP averages gradients in backward: rank 0's NaN gradients are rank 1's loss, not a fault of its own
        (views(([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], Provenance(FINITE)), ([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], HIDDEN)), 0,
         "this rank's own loss and weights were finite; carried by rank 1 (loss nan; its report "
         "report1.json: first non-finite: hidden forward output (float32, inputs finite))"),
        (views(([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], None), ([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], None)), 1,
         "carried by this rank (rank 1) and rank(s) [0]"),
        (None, 0, None),
    ],
)
def test_rank_clause(table: list[dict] | None, rank: int, expected: str | None) -> None:
    assert rank_clause(table, rank, spike=False) == expected


def test_a_spike_lists_every_ranks_own_values() -> None:
    clause = rank_clause(views((HEALTHY, None), (HEALTHY, None)), 0, spike=True)
    assert clause == "per rank: rank 0 loss 0.5 grad norm 2, rank 1 loss 1.5 grad norm 2"


def test_carriers_are_ranks_with_a_flag_or_a_finding() -> None:
    assert carriers(views((HEALTHY, HIDDEN), (LOSS_NAN, None), (HEALTHY, None))) == [0, 1]
