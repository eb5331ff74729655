"""The sharded norm's arithmetic without a process group: on how many ranks an element lives, and each rank's share
of the squared norm. The 2-process runs in ``test_fsdp.py`` check the same against a single-process reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from callbacks.gradient_health import distributed as sharding
from callbacks.gradient_health import tensors


class FakeDTensor:
    """Stands in for a DTensor: a mesh with per-dimension sizes and one placement per mesh dimension."""

    def __init__(self, sizes: tuple[int, ...], placements: tuple[str, ...]) -> None:
        self.device_mesh = SimpleNamespace(size=lambda dim=None: math.prod(sizes) if dim is None else sizes[dim])
        self.placements = tuple(FakeReplicate() if p == "R" else object() for p in placements)


class FakeReplicate:
    pass


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharding, "DTensor", FakeDTensor)
    monkeypatch.setattr(sharding, "Replicate", FakeReplicate)


@pytest.mark.parametrize(
    ("sizes", "placements", "world", "expected"),
    [
        ((2,), ("S",), 2, 1),  # FSDP2 over every rank: each element once
        ((2,), ("R",), 2, 2),  # replicated over the mesh
        ((2, 2), ("S", "R"), 4, 2),  # sharded over data parallel, replicated over tensor parallel
        ((2, 2), ("S", "S"), 4, 1),
        ((2,), ("S",), 4, 2),  # a 2-rank mesh in a world of 4: the other two ranks hold a copy
    ],
)
def test_copies_of_a_dtensor_element(fakes: None, sizes: tuple[int, ...], placements: tuple[str, ...], world: int, expected: int) -> None:
    assert sharding.copies(FakeDTensor(sizes, placements), world, plain_copies=99) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("sharding_kind", "world", "expected"), [("fsdp", 4, 1), ("fsdp2", 4, 4), (None, 4, 1)])
def test_plain_tensors_are_one_shard_under_fsdp_and_a_full_copy_under_fsdp2(sharding_kind: str | None, world: int, expected: int) -> None:
    assert sharding.plain_copies_of(sharding_kind, world) == expected


def test_each_rank_contributes_its_squares_divided_by_their_copies() -> None:
    norms = torch.tensor([3.0, 4.0])
    tensors = [torch.zeros(1), torch.zeros(1)]
    assert float(sharding.summed_squares(norms, tensors, world=2, plain_copies=1)) == 25.0
    # a full copy on both ranks: each rank adds half, so the ranks' sum is the tensor's square once
    assert float(sharding.summed_squares(norms, tensors, world=2, plain_copies=2)) == 12.5


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("layer._fsdp_wrapped_module.act", "layer.act"),  # a module inside a nested FSDP unit
        ("_fsdp_wrapped_module.inp.weight", "inp.weight"),
        ("model._orig_mod.layers.0._checkpoint_wrapped_module.mlp", "model.layers.0.mlp"),  # compiled, checkpointed
        ("my_orig_mod.x", "my_orig_mod.x"),  # only whole segments are wrappers
        ("", ""),
    ],
)
def test_module_paths_are_named_as_the_model_spells_them(name: str, shown: str) -> None:
    assert tensors.user_path(name) == shown
