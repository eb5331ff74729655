"""GradientHealth under FSDP and FSDP2, 2 processes on CPU (gloo): the global norm over shards, one decision on
every rank, skip and rollback of sharded weights and optimiser state, and a replay that names the module without a
hang. FSDP is Lightning's ``FSDPStrategy`` (flat shards); FSDP2 is ``ModelParallelStrategy`` with ``fully_shard``
applied in ``configure_model`` (DTensor shards).

Lightning refuses ``strategy="fsdp"`` on a CPU and would wrap with a ``None`` device id that torch's FSDP refuses;
the ``CPUFSDP`` subclass in the script gets past both (the callback accepts any ``FSDPStrategy`` subclass).
Both ranks read the same batches, so the data-parallel gradient is that batch's gradient and a single process on
the same batches is the reference for the norm.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO

from callbacks.gradient_health import decide as dx

from ._multiprocess import run_script

TIMEOUT_S = 120
FAULT_STEP = 2

SCRIPT = textwrap.dedent(
    """
    import json, logging, math, os, sys, warnings
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import lightning as L
    import torch
    from torch import nn
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from torch.distributed.tensor import DTensor
    from callbacks import GradientHealth, NonFiniteTrainingError

    mode, out, case, devices, kind = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    FAULT_STEP = __FAULT_STEP__

    class CPUFSDP(FSDPStrategy):
        def _setup_model(self, model):  # fsdp_nested: each Linear and the faulty module an FSDP unit of its own
            policy = ModuleWrapPolicy({nn.Linear, Poison}) if kind == "fsdp_nested" else None
            return FullyShardedDataParallel(
                module=model, device_id=torch.device("cpu"), use_orig_params=True, auto_wrap_policy=policy
            )

        def _determine_device_ids(self):
            return None

    POISON = {"on": False}  # not an attribute: under nested FSDP, self.act is the unit wrapping the module

    class Poison(nn.Module):
        def forward(self, x):
            return torch.tanh(x) * (math.nan if POISON["on"] else 1.0)

    def mine(p):  # this rank's part of a parameter
        return (p.to_local() if isinstance(p, DTensor) else p).detach().clone().reshape(-1).tolist()

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp, self.act, self.out = nn.Linear(8, 32), Poison(), nn.Linear(32, 1)
            self.local = {}

        def configure_model(self):
            if self.device_mesh is not None:  # FSDP2: every layer, then the root
                mesh = self.device_mesh["data_parallel"]
                for layer in (self.inp, self.out, self):
                    fully_shard(layer, mesh=mesh)

        def training_step(self, batch, batch_idx):
            POISON["on"] = case == "nan_on_rank1" and self.global_rank == 1 and self.global_step == FAULT_STEP
            x, y = batch
            return ((self.out(self.act(self.inp(x))).squeeze(-1) - y) ** 2).mean()

        def on_train_batch_start(self, batch, batch_idx):
            self.local[self.global_step] = [mine(p) for p in self.parameters()]

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    class Norms(L.Callback):
        def __init__(self):
            self.norms = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            value = trainer.callback_metrics.get("grad_health/grad_norm")
            if value is not None:
                self.norms[trainer.global_step - 1] = float(value)

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 8, generator=g), torch.randn(4, generator=g)) for _ in range(6)]
    cb, norms, model = GradientHealth(on_nonfinite=mode, report_dir=out, label_key=None), Norms(), Model()
    if devices == 1:
        strategy = "auto"
    else:
        strategy = CPUFSDP() if kind != "fsdp2" else ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=5, logger=False,
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[cb, norms])
    error = None
    try:
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    except NonFiniteTrainingError as e:
        error = {"global_step": e.global_step, "diagnosis": e.diagnosis}
    after = [mine(p) for p in model.parameters()]
    result = {
        "rank": trainer.global_rank, "error": error, "global_step": trainer.global_step, "norms": norms.norms,
        "trips": [{k: t[k] for k in ("global_step", "action", "diagnosis", "provenance", "message")} for t in cb.trips],
        "local": {str(k): v for k, v in model.local.items()}, "after": after,
    }
    with open(os.path.join(out, f"result_rank{trainer.global_rank}.json"), "w") as fh:
        json.dump(result, fh)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    """
).replace("__FAULT_STEP__", str(FAULT_STEP))


def run(tmp_path: Path, mode: str, case: str, devices: int, kind: str = "fsdp") -> list[dict[str, Any]]:
    work = tmp_path / f"{kind}-{case}-{mode}-{devices}"
    work.mkdir()
    script = work / "fsdp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    run_script([sys.executable, str(script), mode, str(work), case, str(devices), kind], work, env, TIMEOUT_S, kind.upper())
    return [json.loads((work / f"result_rank{rank}.json").read_text()) for rank in range(devices)]


KINDS = ["fsdp", "fsdp2"]
# nested FSDP units: the norm over every unit's shards; a module inside a unit is named as the model spells it
WRAPPED = [*KINDS, "fsdp_nested"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", WRAPPED)
def test_fsdp_logs_the_global_norm_of_the_unsharded_gradient(tmp_path: Path, kind: str) -> None:
    (reference,) = run(tmp_path, "abort", "healthy", devices=1)
    r0, r1 = run(tmp_path, "abort", "healthy", devices=2, kind=kind)
    assert reference["norms"] and r0["norms"].keys() == reference["norms"].keys() == r1["norms"].keys()
    for step, expected in reference["norms"].items():
        assert math.isclose(r0["norms"][step], expected, rel_tol=1e-5), (step, r0["norms"][step], expected)
        assert r1["norms"][step] == r0["norms"][step]
    # each rank holds a shard: its own parameters are pieces, not the model (the norm above is not per rank)
    assert sum(map(len, r0["after"])) + sum(map(len, r1["after"])) >= sum(map(len, reference["after"]))
    assert sum(map(len, r0["after"])) < sum(map(len, reference["after"]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", WRAPPED)
def test_fsdp_abort_stops_both_ranks_and_names_the_module_on_the_rank_that_carried_it(tmp_path: Path, kind: str) -> None:
    r0, r1 = run(tmp_path, "abort", "nan_on_rank1", devices=2, kind=kind)
    for r in (r0, r1):
        assert r["error"] == {"global_step": FAULT_STEP, "diagnosis": dx.D_LOSS_NAN} and r["global_step"] == FAULT_STEP
    bad, good = r1["trips"][0], r0["trips"][0]
    assert (bad["provenance"]["status"], bad["provenance"]["module"]) == ("forward", "act")
    assert "carried by this rank (rank 1)" in bad["message"] and "first non-finite: act forward output" in bad["message"]
    assert good["provenance"]["status"] == "finite"
    assert "carried by rank 1 (loss nan; its report grad_health_report.rank1.json: first non-finite: act" in good["message"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip", "rollback"])
@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_skip_and_rollback_leave_every_shard_as_it_was(tmp_path: Path, mode: str, kind: str) -> None:
    r0, r1 = run(tmp_path, mode, "nan_on_rank1", devices=2, kind=kind)
    for r in (r0, r1):
        assert r["error"] is None and r["global_step"] == 5
        assert [(t["global_step"], t["action"]) for t in r["trips"]] == [(FAULT_STEP, mode)]
        # skip and rollback alike: the shard this rank holds is the same after the faulty step as before it (the
        # rollback's snapshot is the last good state: taken at the faulty step, whose weights were verified finite)
        assert r["local"][str(FAULT_STEP + 1)] == r["local"][str(FAULT_STEP)]
        assert r["local"][str(FAULT_STEP)] != r["local"][str(FAULT_STEP - 1)]
        assert all(math.isfinite(v) for p in r["after"] for v in p)
