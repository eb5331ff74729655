"""Fixtures shared by several test files (each opts in with ``pytestmark = pytest.mark.usefixtures(...)``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def quiet_training() -> None:
    """Lightning's info lines, the callback's trip warnings and known dependency notices off: tests assert on what
    matters instead."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("callbacks.gradient_health").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The models are tiny: on a busy machine, intra-op threads cost more than they save."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
