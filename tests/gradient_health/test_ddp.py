"""GradientHealth under real 2-process DDP on CPU (gloo): a fault on ONE rank, the same action on both.

Lightning's "ddp" strategy re-launches the script for rank 1, so the fit runs in a subprocess script with a
timeout: a rank left waiting in a collective fails the test instead of freezing pytest.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO, TESTS

from callbacks.gradient_health import decide as dx

from ._multiprocess import run_script

TIMEOUT_S = 120

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, warnings
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from helpers.toy_models import PreBatched, ToyLM, flat
    from callbacks import GradientHealth, NonFiniteTrainingError

    mode, out, case = sys.argv[1], sys.argv[2], sys.argv[3]
    rank = lambda: int(os.environ.get("LOCAL_RANK", "0"))  # set for the re-launched rank-1 process

    class RankData(PreBatched):
        # every rank reads batches 0, 1, 2, ... (no DistributedSampler); batch 2 has no targets on rank 1 only
        def __getitem__(self, i):
            item = dict(super().__getitem__(i))
            if case == "empty_batch_on_rank1" and rank() == 1 and i == 2:
                item["labels"] = torch.full_like(item["labels"], -100)
            return item

    if case == "nan_loss_on_rank1":
        model = ToyLM(fault="nan_loss", fault_steps=[2], fault_rank=1)
    elif case == "nan_hidden_on_rank1":
        model = ToyLM(fault="nan_hidden", fault_steps=[2], fault_rank=1)
    elif case == "nan_param_on_rank1":
        model = ToyLM(fault="nan_param", fault_steps=[2], fault_rank=1)
    elif case == "loss_spike_on_rank1":  # finite: loss x1000 on rank 1 only, after the spike rule's warm-up
        model = ToyLM(fault="loss_spike", fault_steps=[24], fault_rank=1)
    else:  # loss_norm="fixed" keeps the empty batch's loss finite (0): rank 0 sees nothing wrong locally
        model = ToyLM(loss_norm="fixed")
    spikes = case == "loss_spike_on_rank1"
    loader = DataLoader(RankData(26 if spikes else 8), batch_size=None)
    cb = GradientHealth(on_nonfinite=mode, report_dir=out, on_spike=mode if spikes else None)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=26 if spikes else 5, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[cb])
    error = None
    try:
        trainer.fit(model, loader)
    except NonFiniteTrainingError as e:
        error = {"global_step": e.global_step, "diagnosis": e.diagnosis}
    result = {
        "rank": trainer.global_rank,
        "error": error,
        "global_step": trainer.global_step,
        "trips": [
            {k: t[k] for k in ("global_step", "action", "diagnosis", "flags_rank_count", "provenance", "message")}
            for t in cb.trips
        ],
        "weights": flat(model).tolist(),
        "losses": model.losses,
    }
    with open(os.path.join(out, "result_rank%d.json" % trainer.global_rank), "w") as fh:
        json.dump(result, fh)
    # Tear gloo down before interpreter exit: left to the atexit order, its threads can still be
    # running and abort the process ("terminate called without an active exception") under load.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    """
)


def run_ddp(tmp_path: Path, mode: str, case: str) -> list[dict[str, Any]]:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])  # helpers.toy_models, callbacks
    env.pop("LOCAL_RANK", None)
    output = run_script([sys.executable, str(script), mode, str(out), case], tmp_path, env, TIMEOUT_S, "DDP")
    results = []
    for rank in (0, 1):
        path = out / f"result_rank{rank}.json"
        assert path.is_file(), f"rank {rank} wrote no result:\n{output[-4000:]}"
        results.append(json.loads(path.read_text()))
    return results


@pytest.mark.slow
def test_ddp_abort_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    r0, r1 = run_ddp(tmp_path, "abort", "nan_loss_on_rank1")
    for r in (r0, r1):
        assert r["error"] == {"global_step": 2, "diagnosis": dx.D_LOSS_NAN}
        assert r["global_step"] == 2
        assert r["trips"][0]["flags_rank_count"]["loss_nan"] == 1  # seen on one rank, acted on by both
    assert r0["weights"] == r1["weights"]
    assert (tmp_path / "out" / "grad_health_report.json").is_file()
    assert (tmp_path / "out" / "grad_health_report.rank1.json").is_file()


@pytest.mark.slow
def test_ddp_skip_decided_by_all_reduce_for_a_fault_only_one_rank_can_see(tmp_path: Path) -> None:
    r0, r1 = run_ddp(tmp_path, "skip", "empty_batch_on_rank1")
    assert r1["losses"]["2"] == 0.0  # finite loss on the faulty rank, finite gradients on both
    for r in (r0, r1):
        assert r["error"] is None and r["global_step"] == 5
        assert [(t["global_step"], t["action"], t["diagnosis"]) for t in r["trips"]] == [(2, "skip", dx.D_EMPTY_BATCH)]
        assert r["trips"][0]["flags_rank_count"]["empty_batch"] == 1
    assert "carried by rank 1 (batch without targets; its report grad_health_report.rank1.json)" in r0["trips"][0]["message"]
    assert "carried by this rank (rank 1)" in r1["trips"][0]["message"]
    assert r0["weights"] == r1["weights"]  # same action at the same step keeps the replicas identical


@pytest.mark.slow
def test_ddp_replay_names_the_module_on_the_rank_whose_batch_went_bad(tmp_path: Path) -> None:
    """Only rank 1's ``hidden`` output goes NaN. Both ranks stop at the same step (the decision is collective);
    each replays its own batch with no collective (the module logs nothing, DDP's wrapper is bypassed), so rank 1
    names the module and rank 0 finds its own batch finite, and nothing hangs."""
    r0, r1 = run_ddp(tmp_path, "abort", "nan_hidden_on_rank1")
    for r in (r0, r1):
        assert r["error"] == {"global_step": 2, "diagnosis": dx.D_LOSS_NAN} and r["global_step"] == 2
    bad, good = r1["trips"][0]["provenance"], r0["trips"][0]["provenance"]
    assert (bad["status"], bad["module"], bad["where"], bad["inputs_finite"]) == ("forward", "hidden", "forward output", True)
    assert "rank 1" in r1["trips"][0]["message"] and "first non-finite: hidden forward output" in r1["trips"][0]["message"]
    assert good["status"] == "finite"
    # each message says which rank carried it; the healthy rank's points to the one that did, and its report
    assert "carried by this rank (rank 1)" in r1["trips"][0]["message"]
    healthy = r0["trips"][0]["message"]
    assert "rank 0) -> abort; this rank's own loss and weights were finite; carried by rank 1 (loss nan;" in healthy
    assert "its report grad_health_report.rank1.json: first non-finite: hidden forward output" in healthy
    report = json.loads((tmp_path / "out" / "grad_health_report.rank1.json").read_text())
    assert report["trips"][-1]["provenance"]["module"] == "hidden"
    assert r0["weights"] == r1["weights"]


@pytest.mark.slow
def test_ddp_weights_broken_on_one_rank_are_diagnosed_on_both(tmp_path: Path) -> None:
    """Rank 1's in-place write breaks its weights only; every rank measures its weights before each step, so the
    one all-reduce carries the fact to rank 0 and both stop."""
    r0, r1 = run_ddp(tmp_path, "abort", "nan_param_on_rank1")
    for r in (r0, r1):
        assert r["error"] == {"global_step": 2, "diagnosis": dx.D_PARAMS_BEFORE}
        assert r["trips"][0]["flags_rank_count"]["params_nonfinite_before"] == 1


@pytest.mark.slow
def test_ddp_a_spike_on_one_rank_is_judged_on_the_same_numbers_by_both(tmp_path: Path) -> None:
    """Only rank 1's loss is x1000. The loss travels in the step's one all-reduce (the ranks' mean), so both ranks
    judge the same values, reach the same diagnosis word for word, and skip the same step."""
    r0, r1 = run_ddp(tmp_path, "skip", "loss_spike_on_rank1")
    assert r1["losses"]["24"] > 100 * r0["losses"]["24"]
    for r in (r0, r1):
        assert r["error"] is None and r["global_step"] == 26
        assert [(t["global_step"], t["action"]) for t in r["trips"]] == [(24, "skip")]
    assert r0["trips"][0]["diagnosis"] == r1["trips"][0]["diagnosis"] and "loss spike: " in r0["trips"][0]["diagnosis"]
    assert r0["weights"] == r1["weights"]
