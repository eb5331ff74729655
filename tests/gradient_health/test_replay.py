"""GradientHealth says where a non-finite value started and which samples carried it (real faults, CPU).

The model is a plain Lightning module, ``encoder.0 -> encoder.1 -> encoder.2 -> head``, with one fault per case:
an fp16 overflow in ``encoder.1``'s forward, a NaN made only by ``encoder.2``'s backward, a NaN in one sample of
the batch, and a fault that does not come back on replay. Every case also checks that the replay left weights,
gradients, optimiser state, buffers, RNG and the module's attributes exactly as the trip found them.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.toy_models import fp16_scaler_plugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from callbacks import GradientHealth, NonFiniteTrainingError
from callbacks.gradient_health import decide as dx
from callbacks.gradient_health import replay as pv
from callbacks.gradient_health import tensors
from callbacks.gradient_health.provenance import BACKWARD, Provenance

from ._harness import fit, make_trainer

pytestmark = pytest.mark.usefixtures("quiet_training")

FAULT_STEP = 2
MAX_STEPS = 5
BATCH, DIM = 4, 8
BAD_ROW = 2


# --------------------------------------------------------------------------------------------- the model
class Gain(nn.Module):
    """Multiplies by a gain that is huge at the fault step: 1e5 x O(1) activations exceed float16's 65504."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, poison: bool) -> Tensor:
        ctx.poison = poison
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if ctx.poison:
            grad = grad.clone()
            grad[0] = math.nan  # finite gradient in, NaN out: this module's backward made it
        return grad, None


class NaNInBackward(nn.Module):
    """Identity forward; at the fault step its backward returns NaN for one row."""

    def __init__(self) -> None:
        super().__init__()
        self.poison = False

    def forward(self, x: Tensor) -> Tensor:
        return _NaNBackward.apply(x, self.poison)


class Chain(L.LightningModule):
    def __init__(self, fault: str | None = None, transient: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, DIM), Gain(), NaNInBackward(), nn.BatchNorm1d(DIM))
        self.head = nn.Linear(DIM, 2)
        self.fault, self.transient = fault, transient
        self.calls_at_fault = 0
        self.steps_seen = 0  # an attribute training_step rebinds: the replay must put it back

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        at_fault = self.trainer.global_step == FAULT_STEP
        self.calls_at_fault += int(at_fault)
        armed = at_fault and not (self.transient and self.calls_at_fault > 1)
        self.encoder[1].gain = 1e5 if armed and self.fault == "overflow" else 1.0
        self.encoder[2].poison = armed and self.fault == "backward_nan"
        self.steps_seen = self.steps_seen + 1
        loss = F.cross_entropy(self(batch["x"]).float(), batch["y"])
        self.log("train_loss", loss, sync_dist=True)  # a collective under DDP: silenced during the replay
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.01)


class Batches(Dataset):
    """Pre-made batches with sample identities (``sample_ids`` = dataset rows 100 + 4 * batch + row)."""

    def __init__(self, nan_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(MAX_STEPS + 2):
            x = torch.randn(BATCH, DIM, generator=g)
            if i == nan_at:
                x[BAD_ROW, 3] = math.nan
            y = torch.randint(0, 2, (BATCH,), generator=g)
            self.items.append({"x": x, "y": y, "sample_ids": torch.arange(BATCH) + 100 + BATCH * i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


# ------------------------------------------------------------------------------ replay's effect on state
class StateWatch:
    """Wraps the replay: everything it could touch, before and after."""

    def __init__(self) -> None:
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = pv.replay

        def watched(module: L.LightningModule, *args: Any, **kwargs: Any) -> pv.Provenance:
            self.calls += 1
            self.before = _state(module)
            try:
                return original(module, *args, **kwargs)
            finally:
                self.after = _state(module)

        monkeypatch.setattr(pv, "replay", watched)

    def assert_unchanged(self) -> None:
        assert self.before is not None and self.after is not None
        for key in self.before:
            a, b = self.before[key], self.after[key]
            if isinstance(a, dict):
                assert a.keys() == b.keys(), key
                for k in a:
                    assert _same(a[k], b[k]), (key, k)
            else:
                assert _same(a, b), key


def _state(module: L.LightningModule) -> dict[str, Any]:
    opt = module.trainer.optimizers[0]
    return {
        "params": {n: p.detach().clone() for n, p in module.named_parameters()},
        "grads": {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()},
        "buffers": {n: b.clone() for n, b in module.named_buffers()},
        "opt": {str(i): copy.deepcopy(dict(s)) for i, s in enumerate(opt.state.values())},
        "rng": torch.get_rng_state(),
        "attrs": {k: v for k, v in vars(module).items() if isinstance(v, (int, float, bool))},
        "log": {"is_class_method": "log" not in vars(module)},
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.equal(a, b) or (a.shape == b.shape and bool(torch.equal(a.isnan(), b.isnan())) and
                                     bool(torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------------------------- harness
def run(tmp_path: Path, model: L.LightningModule, data: Dataset, mode: str = "abort", fp16: bool = False, **kw: Any):
    cb = GradientHealth(on_nonfinite=mode, report_dir=str(tmp_path), label_key=None, **kw)
    trainer = make_trainer(tmp_path, cb, scaler=fp16, max_steps=MAX_STEPS)
    err = fit(trainer, model, DataLoader(data, batch_size=None))
    return cb, trainer, err


def report(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "grad_health_report.json").read_text())["trips"][-1]


# ================================================================================================= cases
def test_forward_overflow_in_one_module_under_fp16_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StateWatch()
    watch.install(monkeypatch)
    cb, trainer, err = run(tmp_path, Chain("overflow"), Batches(), fp16=True)
    assert err is not None and err.global_step == FAULT_STEP
    assert err.diagnosis in (dx.D_LOSS_NAN, dx.D_LOSS_INF)
    p = report(tmp_path)["provenance"]
    assert (p["status"], p["module"], p["where"], p["dtype"], p["inputs_finite"]) == (
        "forward", "encoder.1", "forward output", "float16", True
    )
    assert p["float32_max_abs"] > 65504 and p["max_abs_before"] < 65504  # finite input, out of fp16 range
    assert "first non-finite: encoder.1 forward output (float16, inputs finite, max |x| before" in str(err)
    assert "exceeds the float16 range" in str(err)  # the fix names the module and the dtype
    assert watch.calls == 1
    watch.assert_unchanged()


def test_nan_made_only_in_one_modules_backward_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StateWatch()
    watch.install(monkeypatch)
    cb, trainer, err = run(tmp_path, Chain("backward_nan"), Batches())
    assert err is not None and err.global_step == FAULT_STEP and err.diagnosis == dx.D_GRAD_NAN
    p = report(tmp_path)["provenance"]
    assert (p["status"], p["module"], p["where"], p["dtype"]) == (
        "backward", "encoder.2", "backward: gradient w.r.t. its input", "float32"
    )
    assert p["rows"] == [0]  # the row its backward poisoned
    assert "first non-finite: encoder.2 backward: gradient w.r.t. its input (float32, max |grad| before" in str(err)
    # before provenance the report only had the symptom: the weight gradients upstream of the culprit
    assert set(report(tmp_path)["nonfinite_grad_params"]) == {"encoder.0.weight", "encoder.0.bias"}
    watch.assert_unchanged()


def test_nonfinite_input_in_one_sample_names_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StateWatch()
    watch.install(monkeypatch)
    cb, trainer, err = run(tmp_path, Chain(), Batches(nan_at=FAULT_STEP))
    assert err is not None and err.global_step == FAULT_STEP and err.diagnosis == dx.D_LOSS_NAN
    p = report(tmp_path)["provenance"]
    bad_id = 100 + BATCH * FAULT_STEP + BAD_ROW
    assert (p["status"], p["rows"]) == ("batch", [BAD_ROW])
    assert p["samples"]["ids"] == [100 + BATCH * FAULT_STEP + r for r in range(BATCH)]
    assert p["samples"]["nonfinite_ids"] == [bad_id]
    assert f"first non-finite: in the batch itself (key 'x', rows [{BAD_ROW}]); samples [{bad_id}]" in str(err)
    assert watch.calls == 1  # the batch check answers before any module runs
    watch.assert_unchanged()


def test_transient_fault_is_reported_as_such_and_skip_carries_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StateWatch()
    watch.install(monkeypatch)
    model = Chain("backward_nan", transient=True)
    cb, trainer, err = run(tmp_path, model, Batches(), mode="skip")
    assert err is None and trainer.global_step == MAX_STEPS and cb.skipped_steps == 1
    p = cb.trips[0]["provenance"]
    assert p["status"] == "finite" and "transient" in cb.trips[0]["message"]
    assert model.steps_seen == MAX_STEPS  # the replay's rebinding of steps_seen was undone
    watch.assert_unchanged()


class NoBatchIdx(Chain):
    def training_step(self, batch: dict[str, Tensor]) -> Tensor:  # type: ignore[override]
        return super().training_step(batch, 0)


def test_training_step_without_batch_idx_is_replayed_as_lightning_calls_it(tmp_path: Path) -> None:
    cb, trainer, err = run(tmp_path, NoBatchIdx("backward_nan"), Batches())
    p = report(tmp_path)["provenance"]
    assert err is not None and (p["status"], p["module"]) == ("backward", "encoder.2")


def test_torchscript_submodules_are_traced_around(tmp_path: Path) -> None:
    model = Chain("backward_nan")
    model.encoder[0] = torch.jit.script(model.encoder[0])  # takes no forward hooks
    cb, trainer, err = run(tmp_path, model, Batches())
    p = report(tmp_path)["provenance"]
    assert err is not None and (p["status"], p["module"]) == ("backward", "encoder.2")
    assert "not hooked (TorchScript): encoder.0" in p["detail"]


def test_replay_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StateWatch()
    watch.install(monkeypatch)
    cb, trainer, err = run(tmp_path, Chain("backward_nan"), Batches(), replay_on_trip=False)
    assert err is not None and watch.calls == 0 and report(tmp_path)["provenance"] is None


def test_replay_with_gradient_accumulation_finds_the_bad_micro_batch(tmp_path: Path) -> None:
    cb = GradientHealth(report_dir=str(tmp_path), label_key=None)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
    )
    bad_batch = 2 * 1 + 1  # the second micro-batch of optimiser step 1
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.fit(Chain(), DataLoader(Batches(nan_at=bad_batch), batch_size=None))
    p = cb.trips[0]["provenance"]
    assert info.value.global_step == 1 and p["status"] == "batch" and p["batch_idx"] == bad_batch
    assert p["samples"]["nonfinite_ids"] == [100 + BATCH * bad_batch + BAD_ROW]


# ========================================================================= the SFT module (embedded arch)
def test_sft_module_overflow_names_the_projection_and_the_records(tmp_path: Path) -> None:
    """The embedded model's architecture (tiny Llama): one frozen MLP weight grown past 65504, so autocast's cast to
    float16 makes it inf. The report names that projection's base layer and the weight, and the records of the
    batch by their lines in the data file."""
    from sft_lightning.data.datamodule import SFTDataModule
    from sft_lightning.module import SFTModule

    rows = [{"question": f"How many meters are in {i} km?", "answer": 1000 * i} for i in range(1, 33)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = SFTDataModule(
        train_file=str(train), val_size=4, batch_size=8, eval_batch_size=8, tokenizer="tiny-random", max_length=96
    )
    module = SFTModule(model="tiny-random", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3)

    class Grow(L.Callback):  # the fault: at step 1 one frozen weight grows 1e6 x (still below 65504)
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
            if trainer.global_step == 1:
                w = dict(pl_module.named_parameters())[TARGET]
                with torch.no_grad():
                    w.mul_(1e6)

    TARGET = "model.base_model.model.model.layers.1.mlp.down_proj.base_layer.weight"
    cb = GradientHealth(report_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, plugins=[fp16_scaler_plugin()],
        default_root_dir=str(tmp_path),
        callbacks=[Grow(), cb],
    )
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.fit(module, datamodule=data)
    p = cb.trips[0]["provenance"]
    assert info.value.global_step == 1
    assert (p["status"], p["module"], p["dtype"], p["inputs_finite"]) == (
        "forward", "model.base_model.model.model.layers.1.mlp.down_proj.base_layer", "float16", True
    )
    assert p["weight_max_abs"] > 65504 and p["float32_max_abs"] < 65504  # the weight, not the activations
    assert "weights (max |w| 8" in str(info.value) and "exceed the float16 range" in str(info.value)
    # every row overflows; each is named by dataset index and by its line in the file
    samples = p["samples"]
    assert len(samples["nonfinite_ids"]) == 8 and samples["nonfinite_ids"] == samples["ids"]
    assert samples["records"][0].startswith(f"{train} line {samples['ids'][0] + 1}: ")
    assert "layers.1.mlp.down_proj.base_layer forward output (float16, inputs finite" in str(info.value)


# ============================================================================== facts the replay reads, no training
def test_the_first_nonfinite_key_and_rows_of_any_batch_layout() -> None:
    x = torch.zeros(BATCH, DIM)
    x[BAD_ROW, 1] = math.inf
    ids = torch.arange(BATCH)
    assert tensors.nonfinite_in_batch({"ids": ids, "x": x}, BATCH) == ("x", [BAD_ROW])
    assert tensors.nonfinite_in_batch((ids, x), BATCH) == ("1", [BAD_ROW])
    assert tensors.nonfinite_in_batch(SimpleNamespace(ids=ids, inner={"x": x}), BATCH) == ("inner", [BAD_ROW])
    assert tensors.nonfinite_in_batch({"x": torch.zeros(BATCH, DIM)}, BATCH) is None
    assert tensors.nonfinite_in_batch({"x": x}, None) == ("x", None)  # rows only when dim 0 is known to be the batch
    assert tensors.batch_size_of({"x": x}, [7, 8]) == 2 and tensors.batch_size_of({"x": x}, None) == BATCH


def test_a_backward_answer_reads_as_one_clause_with_its_fix() -> None:
    found = Provenance(BACKWARD, module="enc", where="backward: gradient of enc.weight", dtype="float32", max_abs_before=2.5)
    assert found.summary() == "first non-finite: enc backward: gradient of enc.weight (float32, max |grad| before 2.5)"
    assert found.advice() == (
        "enc's backward turns finite gradients non-finite: look for sqrt/norm/division at 0 in its forward, or a"
        " gradient too large for its dtype"
    )
