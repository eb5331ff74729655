"""Test-only strategy shim, loaded by class path (``helpers.strategies.CPUFSDP``): FSDP on a CPU.

Lightning refuses ``strategy="fsdp"`` with a CPU accelerator and would give torch's FSDP a ``None`` device id,
which it refuses; this subclass passes the CPU device and no device ids for the barrier. Lightning's full state
dict also asks FSDP to offload to the CPU, which on CPU parameters crashes inside torch (a segfault in FSDP's
``param_hook``, reproduced outside Lightning); importing this module makes it gather without offloading. On a GPU
``--trainer.strategy fsdp`` needs none of it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch.strategies.fsdp as lightning_fsdp
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


@contextmanager
def _full_state_dict_without_offload(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Iterator[None]:
    with FSDP.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    ):
        yield


# only processes that run FSDP on a CPU import this module
lightning_fsdp._get_full_state_dict_context = _full_state_dict_without_offload


class CPUFSDP(FSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return FSDP(module=model, device_id=torch.device("cpu"), use_orig_params=True)

    def _determine_device_ids(self) -> None:  # type: ignore[override]
        return None
