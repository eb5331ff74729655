"""GradientHealth in LightningModules of the shapes other projects write: a layer unfrozen mid-run, BatchNorm, two
optimisers under manual optimisation, a recurrent state carried between batches, bare-tensor batches, gradient
accumulation. Each trains for real on CPU with a fault injected at a known step, and checks the exact outcome."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GradientHealth, NonFiniteTrainingError
from callbacks.gradient_health import decide as dx

STEPS, FAULT = 8, 4


def trainer_for(tmp_path: Path, cb: GradientHealth, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", max_steps=STEPS, logger=CSVLogger(str(tmp_path)), log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), callbacks=[cb],
    )
    options.update(kwargs)
    return L.Trainer(**options)


def logged(trainer: L.Trainer, key: str) -> dict[int, float]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"  # type: ignore[union-attr]
    with path.open() as fh:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(fh) if r.get(key)}


def blobs(n_batches: int, nan_at: int | None = None, batch: int = 8, dim: int = 6) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch, dim, generator=g)
    y = (x[:, 0] > 0).long()
    if nan_at is not None:
        x[nan_at * batch + 1, 2] = math.nan
    return TensorDataset(x, y)


def finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ====================================================================================== a layer unfrozen mid-run
class Unfreezing(L.LightningModule):
    """The first layer is frozen, in the optimiser all along, and unfrozen at ``UNFREEZE`` (gradual unfreezing)."""

    UNFREEZE = 3

    def __init__(self, nan_grad_at: int | None = None) -> None:
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.head = nn.Linear(16, 2)
        self.body.requires_grad_(False)
        self.nan_grad_at = nan_grad_at
        self.true_norms: dict[int, float] = {}

    def _fault(self, grad: Tensor) -> Tensor:
        return grad * math.nan if self.global_step == self.nan_grad_at else grad

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.global_step == self.UNFREEZE:
            self.body.requires_grad_(True)
            self.body.weight.register_hook(self._fault)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.head(torch.relu(self.body(x))), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:  # a skipped step: GradientHealth (which runs first) dropped the gradients
            return
        self.true_norms[self.global_step] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.05)


def test_a_layer_unfrozen_mid_run_is_in_the_logged_norm(tmp_path: Path) -> None:
    model = Unfreezing()
    trainer = trainer_for(tmp_path, GradientHealth(), gradient_clip_val=0.01)
    trainer.fit(model, DataLoader(blobs(STEPS), batch_size=8))
    norms = logged(trainer, "grad_health/grad_norm")
    assert sorted(norms) == list(range(STEPS))
    for step, value in norms.items():
        assert value == pytest.approx(model.true_norms[step], rel=1e-4), step  # pre-clip, the body included


@pytest.mark.parametrize("mode", ["abort", "skip", "rollback"])
def test_a_nan_gradient_in_a_layer_unfrozen_mid_run_trips_at_its_step(mode: str, tmp_path: Path) -> None:
    model = Unfreezing(nan_grad_at=FAULT)
    cb = GradientHealth(on_nonfinite=mode, report_dir=str(tmp_path))
    trainer = trainer_for(tmp_path, cb)
    before = model.body.weight.detach().clone()
    if mode == "abort":
        with pytest.raises(NonFiniteTrainingError) as info:
            trainer.fit(model, DataLoader(blobs(STEPS), batch_size=8))
        assert (info.value.global_step, info.value.diagnosis) == (FAULT, dx.D_GRAD_NAN)
        assert cb.trips[0]["nonfinite_grad_params"] == ["body.weight"]
        return
    trainer.fit(model, DataLoader(blobs(STEPS), batch_size=8))
    assert [(t["global_step"], t["diagnosis"]) for t in cb.trips] == [(FAULT, dx.D_GRAD_NAN)]
    assert finite(*model.parameters()) and not torch.equal(model.body.weight, before)  # it trained after
    trainer.save_checkpoint(str(tmp_path / "after.ckpt"))
    state = torch.load(tmp_path / "after.ckpt", weights_only=False)
    assert finite(*state["state_dict"].values())
    assert all(finite(v) for s in state["optimizer_states"][0]["state"].values() for v in s.values())


# =============================================================================================== BatchNorm buffers
class Normed(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
        self.stats: dict[int, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.stats[self.global_step] = self.net[1].running_mean.clone()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("mode", ["skip", "rollback"])
def test_batchnorm_statistics_written_by_a_bad_batch_are_put_back(mode: str, tmp_path: Path) -> None:
    model = Normed()
    cb = GradientHealth(on_nonfinite=mode, report_dir=str(tmp_path))
    trainer = trainer_for(tmp_path, cb, max_steps=FAULT + 1)
    seen: dict[str, Tensor] = {}

    class AfterTrip(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            if trainer.global_step == FAULT + 1 or (trainer.global_step == FAULT and cb.trips):
                seen.setdefault("mean", pl_module.net[1].running_mean.clone())

    trainer.callbacks.append(AfterTrip())
    trainer.fit(model, DataLoader(blobs(STEPS, nan_at=FAULT), batch_size=8))
    assert [(t["global_step"], t["diagnosis"]) for t in cb.trips] == [(FAULT, dx.D_LOSS_NAN)]
    assert torch.equal(seen["mean"], model.stats[FAULT])  # the statistics from before the bad batch
    bn = model.net[1]
    assert finite(bn.running_mean, bn.running_var)
    model.eval()
    assert finite(model(torch.randn(4, 6)))


def test_a_checkpoint_with_a_non_finite_buffer_is_refused(tmp_path: Path) -> None:
    model = Normed()
    cb = GradientHealth(report_dir=str(tmp_path))

    class Poison(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            if trainer.global_step == 2:
                pl_module.net[1].running_var.fill_(math.nan)  # written outside any step
                trainer.save_checkpoint(str(tmp_path / "bad.ckpt"))

    trainer = trainer_for(tmp_path, cb)
    trainer.callbacks.append(Poison())
    with pytest.raises(NonFiniteTrainingError, match="net.1.running_var"):
        trainer.fit(model, DataLoader(blobs(STEPS), batch_size=8))
    assert not (tmp_path / "bad.ckpt").exists()


# ============================================================================ two optimisers, manual optimisation
class TwoOptimizers(L.LightningModule):
    """A GAN-shaped module: two sub-networks, two optimisers, both stepped in ``training_step``."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.small = nn.Linear(6, 2)
        self.large = nn.Linear(6, 2)
        self.nan_at = nan_at
        self.true: dict[int, tuple[float, float]] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        opt_small, opt_large = self.optimizers()  # type: ignore[misc]
        norms = []
        for net, opt in ((self.small, opt_small), (self.large, opt_large)):
            loss = F.cross_entropy(net(x), y) * (1.0 if net is self.small else 1000.0)
            if self.nan_at == batch_idx and net is self.large:
                loss = loss * math.nan
            opt.zero_grad()
            self.manual_backward(loss)
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))))
            opt.step()
        self.true[batch_idx] = (norms[0], norms[1])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.small.parameters(), lr=0.01), torch.optim.SGD(self.large.parameters(), lr=1e-5)]


def test_two_optimisers_log_each_norm_and_their_maximum(tmp_path: Path) -> None:
    model = TwoOptimizers()
    trainer = trainer_for(tmp_path, GradientHealth(), max_steps=2 * 5)
    trainer.fit(model, DataLoader(blobs(5), batch_size=8))
    total = logged(trainer, "grad_health/grad_norm")
    first, second = logged(trainer, "grad_health/grad_norm/SGD"), logged(trainer, "grad_health/grad_norm/SGD-1")
    assert len(total) == 5
    for (step, value), batch in zip(sorted(total.items()), range(5)):
        small, large = model.true[batch]
        assert first[step] == pytest.approx(small, rel=1e-4) and second[step] == pytest.approx(large, rel=1e-4)
        assert value == pytest.approx(max(small, large), rel=1e-4) and large > 100 * small


def test_two_optimisers_a_nan_in_the_second_is_caught_at_its_step(tmp_path: Path) -> None:
    model = TwoOptimizers(nan_at=2)
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer = trainer_for(tmp_path, cb, max_steps=2 * 5)
    trainer.fit(model, DataLoader(blobs(5), batch_size=8))
    assert [(t["global_step"], t["batch_idx"], t["diagnosis"]) for t in cb.trips] == [(5, 2, dx.D_LOSS_NAN)]
    assert finite(*model.parameters())


# ==================================================================================== state carried between batches
class Recurrent(L.LightningModule):
    """A hidden state carried from batch to batch (truncated BPTT style), detached after each step."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.hidden: Tensor | None = None
        self.resets = 0
        if reset:
            self.reset_state = self._reset  # the documented hook

    def _reset(self) -> None:
        self.resets += 1
        self.hidden = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out, hidden = self.rnn(x.unsqueeze(1), self.hidden)
        self.hidden = hidden.detach()
        return F.cross_entropy(self.head(out[:, -1]), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_a_carried_hidden_state_is_put_back_and_the_run_recovers(tmp_path: Path) -> None:
    model = Recurrent()
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer = trainer_for(tmp_path, cb)
    trainer.fit(model, DataLoader(blobs(STEPS, nan_at=FAULT), batch_size=8))
    assert len(cb.trips) == 1 and cb.skipped_steps == 1  # one skip, not the whole budget
    trip = cb.trips[0]
    assert trip["provenance"]["status"] == "batch"  # replayed from the state the step started from
    assert trip["nonfinite_attributes"] == ["hidden (put back to its value before the step)"]
    assert finite(model.hidden, *model.parameters())


def test_reset_state_is_called_after_a_skip(tmp_path: Path) -> None:
    model = Recurrent(reset=True)
    cb = GradientHealth(on_nonfinite="skip", report_dir=str(tmp_path))
    trainer_for(tmp_path, cb).fit(model, DataLoader(blobs(STEPS, nan_at=FAULT), batch_size=8))
    assert model.resets == 1 and len(cb.trips) == 1 and finite(model.hidden, *model.parameters())


# ================================================================================================ bare-tensor batches
class BareTensors(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 1)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_nan_in_a_bare_tensor_batch_is_named_as_the_batch(tmp_path: Path) -> None:
    data = torch.randn(STEPS * 4, 6)
    data[FAULT * 4 + 3, 0] = math.nan
    cb = GradientHealth(report_dir=str(tmp_path))
    with pytest.raises(NonFiniteTrainingError, match=r"in the batch itself \(key 'batch', rows \[3\]\)"):
        trainer_for(tmp_path, cb).fit(BareTensors(), DataLoader(data, batch_size=4))
    assert cb.trips[0]["provenance"]["rows"] == [3]


# ====================================================================================================== accumulation
def test_under_accumulation_the_message_names_the_micro_batch_that_carried_it(tmp_path: Path) -> None:
    data = torch.randn(STEPS * 4, 6)
    data[5 * 4 + 1, 0] = math.nan  # batch 5: the first of step 2's three micro-batches (3, 4, 5 -> step 1)
    cb = GradientHealth(report_dir=str(tmp_path))
    with pytest.raises(NonFiniteTrainingError, match=r"at global step 1 \(epoch 0, batch 5\)") as info:
        trainer_for(tmp_path, cb, accumulate_grad_batches=3).fit(BareTensors(), DataLoader(data, batch_size=4))
    assert cb.trips[0]["batch_idx"] == cb.trips[0]["provenance"]["batch_idx"] == 5
    assert "batch 5" in str(info.value)
