"""The original bug report, reproduced end to end with the real SFTModule + SFTDataModule.

The report: "LoRA fine-tuning in fp16, ``grad_norm: nan`` in every log line, accuracy 0 after training".
Here on the offline ``tiny-random`` Llama (seconds on CPU), with the GradientHealth callback:

a) pure fp16 (``precision="16-true"``: base *and* LoRA weights fp16, no GradScaler) - the "before" picture
   (without the callback the run goes on to the end with NaN loss, NaN gradients and NaN LoRA weights), and
   the callback stopping it at the first bad step with a diagnosis and a JSON report;
b) a batch whose labels are all ``-100`` (SFTModule's loss is sum/count, so 0/0 = NaN on purpose): stopped
   at exactly that step;
c) the fixed configuration (fp32 / bf16-mixed, fp32 LoRA weights - SFTModule's default): the same number of
   steps, finite loss, finite logged ``grad_health/grad_norm``, finite weights.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from callbacks import GradientHealth, NonFiniteTrainingError
from callbacks.gradient_health import decide as dx
from sft_lightning.data.batching import IGNORE_INDEX
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.module import SFTModule

pytestmark = pytest.mark.usefixtures("quiet_training")

MAX_STEPS = 6  # every run is given the same budget; 64 examples / batch 8 = 8 batches, one epoch
MASKED_BATCH = 3  # case b: the batch (== global step here) whose labels are all -100
SEED = 0

# tiny-random Llama: 2 layers x 7 projections x (lora_A, lora_B) = 28 trainable LoRA tensors
N_LORA_TENSORS = 28
LAYERS = (0, 1)
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# parameter order as GradientHealth reports it (the optimiser's order = named_parameters order)
LORA_NAMES = [
    f"model.base_model.model.model.layers.{layer}.{proj}.lora_{ab}.default.weight"
    for layer in LAYERS
    for proj in PROJECTIONS
    for ab in ("A", "B")
]




# ------------------------------------------------------------------------------------------------ helpers
def make_data() -> SFTDataModule:
    return SFTDataModule(
        train_size=64, val_size=8, batch_size=8, eval_batch_size=8, tokenizer="tiny-random", max_length=160, seed=SEED
    )


def make_module() -> SFTModule:
    # configs/smoke.yaml's adapter and learning rate; base_dtype stays SFTModule's default (float32)
    return SFTModule(
        model="tiny-random", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=3e-3, max_new_tokens=4
    )


class Recorder(Callback):
    """What a user would see in the log: per step, the training loss and the pre-clip total grad norm."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.grad_norms: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad.detach().float() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms[trainer.global_step] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses[batch_idx] = float(outputs["loss"])


def make_trainer(tmp_path: Path, callbacks: list[Callback], precision: str) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=MAX_STEPS,
        gradient_clip_val=1.0,  # as in every shipped config
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=CSVLogger(str(tmp_path), name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )


def fit(trainer: L.Trainer, module: SFTModule, data: SFTDataModule) -> NonFiniteTrainingError | None:
    L.seed_everything(SEED, verbose=False)
    try:
        trainer.fit(module, datamodule=data)
    except NonFiniteTrainingError as err:
        return err
    return None


def lora_params(module: SFTModule) -> dict[str, torch.Tensor]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def read_metrics(trainer: L.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as fh:  # type: ignore[arg-type]
        return list(csv.DictReader(fh))


def logged(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


# ---------------------------------------------------------------------------- a) pure fp16 ("16-true")
def test_pure_fp16_without_callback_trains_on_silently_with_nan(tmp_path: Path) -> None:
    """The "before" picture: nothing stops the run; from step 1 on every loss and grad norm is NaN."""
    module, recorder = make_module(), Recorder()
    trainer = make_trainer(tmp_path, [recorder], precision="16-true")
    assert fit(trainer, module, make_data()) is None  # no error: the run "finished"
    assert trainer.global_step == MAX_STEPS

    params = lora_params(module)
    # "16-true" converts the whole module after configure_model: the fp32 LoRA weights became fp16 too
    assert len(params) == N_LORA_TENSORS and {p.dtype for p in params.values()} == {torch.float16}
    # step 0's loss and gradients are finite, but its fp16 AdamW update is not: eps=1e-8 underflows to 0 in
    # fp16, so lora_A (zero gradient while lora_B is still 0) gets 0/0 = NaN and lora_B, whose second moment
    # 0.001 * g**2 underflows to 0, gets m/0 = inf. Every later forward pass is NaN.
    assert math.isfinite(recorder.losses[0]) and math.isfinite(recorder.grad_norms[0])
    assert all(math.isnan(recorder.losses[s]) for s in range(1, MAX_STEPS))
    assert all(math.isnan(recorder.grad_norms[s]) for s in range(1, MAX_STEPS))  # "grad_norm: nan"
    bad = sorted(n for n, p in params.items() if not bool(p.isfinite().all()))
    assert bad == sorted(params)  # at the end every LoRA tensor (A and B) is NaN
    losses = logged(read_metrics(trainer), "train/loss")
    assert sorted(losses) == list(range(MAX_STEPS)) and all(math.isnan(losses[s]) for s in range(1, MAX_STEPS))


def test_pure_fp16_is_stopped_at_the_first_bad_step(tmp_path: Path) -> None:
    module = make_module()
    trainer = make_trainer(tmp_path, [GradientHealth()], precision="16-true")
    with pytest.warns(UserWarning) as record:
        err = fit(trainer, module, make_data())
    messages = [str(w.message) for w in record]
    assert any("precision='16-true' runs without a GradScaler" in m for m in messages)
    assert any(f"trainable parameters are not fp32 ({N_LORA_TENSORS} x float16)" in m for m in messages)

    # the update of step 0 made the LoRA weights NaN/inf (its loss and grads were finite); caught at step 1,
    # before that step's update, with the cause (the optimizer step), not the symptom (NaN loss at step 1)
    assert err is not None
    assert err.global_step == 1
    assert err.diagnosis == dx.D_PARAMS_AFTER
    assert err.diagnosis == "parameters became non-finite in the optimizer step although loss and gradients were finite"
    assert trainer.global_step == 1  # step 1's update never happened

    report = Path(trainer.log_dir) / "grad_health_report.json"  # type: ignore[arg-type]
    assert report.is_file() and err.report_path == str(report)
    trips = json.loads(report.read_text())["trips"]
    assert len(trips) == 1
    trip = trips[0]
    assert trip["global_step"] == 1 and trip["batch_idx"] == 1 and trip["action"] == "abort"
    assert trip["diagnosis"] == dx.D_PARAMS_AFTER
    assert trip["flags_rank_count"]["params_nonfinite_after_prev_step"] == 1
    assert trip["loss"] == "nan" and trip["grad_norm"] == "nan"  # step 1's symptoms, also recorded
    assert trip["nonfinite_param_count"] == N_LORA_TENSORS  # every LoRA tensor, A and B ...
    assert trip["nonfinite_params"] == LORA_NAMES[:10]  # ... the report names the first 10, in order
    assert trip["nonfinite_grad_param_count"] == N_LORA_TENSORS
    assert trip["grad_norm_history"][0][0] == 0 and math.isfinite(trip["grad_norm_history"][0][1])
    assert trip["grad_norm_history"][1] == [1, "nan"]
    params = lora_params(module)
    assert sorted(params) == sorted(LORA_NAMES)
    a_params = [p for n, p in params.items() if ".lora_A." in n]
    b_params = [p for n, p in params.items() if ".lora_B." in n]
    assert all(bool(p.isnan().all()) for p in a_params)  # 0/0 everywhere
    assert all(bool(p.isinf().any()) for p in b_params)  # m/0


# ------------------------------------------------------------------------------- b) fully masked labels
class _MaskOneBatch:
    """Iterates a DataLoader and sets every label of batch ``at`` to -100 (nothing supervised)."""

    def __init__(self, loader: Any, at: int) -> None:
        self.loader, self.at = loader, at

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(self.loader):
            if i == self.at:
                batch = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
            yield batch


class DataWithMaskedBatch(SFTDataModule):
    def train_dataloader(self) -> Any:
        return _MaskOneBatch(super().train_dataloader(), MASKED_BATCH)


def test_fully_masked_batch_is_stopped_at_that_step(tmp_path: Path) -> None:
    module = make_module()
    data = DataWithMaskedBatch(
        train_size=64, val_size=8, batch_size=8, eval_batch_size=8, tokenizer="tiny-random", max_length=160, seed=SEED
    )
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [GradientHealth(), recorder], precision="32-true")
    err = fit(trainer, module, data)

    assert err is not None
    assert err.global_step == MASKED_BATCH
    assert err.diagnosis == dx.D_EMPTY_BATCH == "batch has no supervised tokens"
    trip = json.loads(Path(err.report_path or "").read_text())["trips"][-1]
    assert trip["global_step"] == MASKED_BATCH and trip["batch_idx"] == MASKED_BATCH
    assert trip["flags_rank_count"]["empty_batch"] == 1
    # The loss SFTModule returns is the batch's share of its accumulation window: 0 for a batch
    # without targets (a NaN there would poison a window that other micro-batches fill). The
    # callback judges the labels instead, so the run still stops at exactly this batch.
    assert trip["loss"] == 0.0
    # the steps before were fine, and the empty batch's update was never applied
    assert all(math.isfinite(recorder.losses[s]) for s in range(MASKED_BATCH))
    assert all(bool(p.isfinite().all()) for p in lora_params(module).values())


# ------------------------------------------------------------------------------------ c) the fixed recipe
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fixed_configuration_trains_with_finite_loss_and_grad_norm(tmp_path: Path, precision: str) -> None:
    module, cb, recorder = make_module(), GradientHealth(), Recorder()
    trainer = make_trainer(tmp_path, [cb, recorder], precision=precision)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="GradientHealth.*")  # no setup warning for this recipe
        assert fit(trainer, module, make_data()) is None
    assert trainer.global_step == MAX_STEPS and cb.trips == []
    assert not (Path(trainer.log_dir) / "grad_health_report.json").exists()  # type: ignore[arg-type]

    params = lora_params(module)
    assert len(params) == N_LORA_TENSORS and {p.dtype for p in params.values()} == {torch.float32}
    assert all(bool(p.isfinite().all()) for p in params.values())
    # the frozen base follows the precision (base_dtype auto): bf16 under bf16-mixed, fp32 under 32-true
    base = {p.dtype for p in module.parameters() if not p.requires_grad}
    assert base == {torch.bfloat16 if precision == "bf16-mixed" else torch.float32}

    rows = read_metrics(trainer)
    grad_norms = logged(rows, "grad_health/grad_norm")
    losses = logged(rows, "train/loss")
    assert sorted(grad_norms) == list(range(MAX_STEPS)) and sorted(losses) == list(range(MAX_STEPS))
    assert all(math.isfinite(v) and v > 0 for v in grad_norms.values())
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    # the logged value is the pre-clip total norm of that step (log_every_n_steps=1: one step per interval)
    for step, value in grad_norms.items():
        assert value == pytest.approx(recorder.grad_norms[step], rel=1e-4)
    assert all(float(r["grad_health/skipped_steps"]) == 0.0 for r in rows if r.get("grad_health/skipped_steps"))
