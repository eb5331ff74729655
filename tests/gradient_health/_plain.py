"""A plain Lightning model (float inputs, MSE, AdamW with a step-interval warm-up schedule) for the spike and
scheduler tests: nothing project-specific, so what it shows holds for any Lightning module.

``inf_grad_at`` / ``nan_loss_at`` inject a non-finite gradient / loss at those steps. ``scale_inputs_at`` multiplies the inputs of the batches at those global steps by ``input_scale`` (1000: a finite
loss and gradient spike). ``per_sample_loss`` and ``describe_samples`` are the optional hooks GradientHealth uses to
name the samples of a trip. The per-step loss, pre-clip gradient norm, weights and learning rate are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

IN, HIDDEN, BATCH = 16, 32, 16


class Regression(Dataset):
    """Pre-batched ``{"x", "y", "sample_ids"}``: item i is batch i, a linear target plus noise."""

    def __init__(self, n_batches: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(IN, generator=g)
        self.items = []
        for i in range(n_batches):
            x = torch.randn(BATCH, IN, generator=g)
            y = x @ w + 0.1 * torch.randn(BATCH, generator=g)
            self.items.append({"x": x, "y": y, "sample_ids": torch.arange(i * BATCH, (i + 1) * BATCH)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


def regression_loader(n_batches: int, seed: int = 0) -> DataLoader:
    return DataLoader(Regression(n_batches, seed), batch_size=None, shuffle=False)


class Plain(L.LightningModule):
    def __init__(
        self,
        scale_inputs_at: Iterable[int] = (),
        input_scale: float = 1000.0,
        lr: float = 1e-2,
        warmup_steps: int = 20,
        inf_grad_at: Iterable[int] = (),
        nan_loss_at: Iterable[int] = (),
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))
        self.scale_inputs_at, self.input_scale = set(scale_inputs_at), input_scale
        self.inf_grad_at, self.nan_loss_at = set(inf_grad_at), set(nan_loss_at)
        self.lr, self.warmup_steps = lr, warmup_steps
        self.net[0].weight.register_hook(self._grad_fault)
        self.losses: dict[int, float] = {}
        self.grad_norms: dict[int, float] = {}
        self.before: dict[int, Tensor] = {}
        self.after: dict[int, Tensor] = {}
        self.lrs: dict[int, float] = {}  # lr in effect at each step
        self.sched_epochs: dict[int, int] = {}  # the scheduler's last_epoch after each batch

    def _grad_fault(self, grad: Tensor) -> Tensor:
        if self._trainer is not None and self.trainer.global_step in self.inf_grad_at:
            return torch.full_like(grad, math.inf)
        return grad

    def _inputs(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["x"]
        if self._trainer is not None and self.trainer.global_step in self.scale_inputs_at:
            x = x * self.input_scale
        return x

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.mse_loss(self.net(self._inputs(batch)).squeeze(-1).float(), batch["y"])
        if self.trainer.global_step in self.nan_loss_at:
            loss = loss * math.nan
        self.losses[self.trainer.global_step] = float(loss.detach())
        return loss

    def per_sample_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return (self.net(self._inputs(batch)).squeeze(-1) - batch["y"]) ** 2

    def describe_samples(self, ids: list[Any]) -> list[str]:
        return [f"regression sample {i}" for i in ids]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.before[self.trainer.global_step] = flat(self)
        self.lrs[self.trainer.global_step] = float(self.optimizers().param_groups[0]["lr"])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [p.grad.float().norm() for p in self.parameters() if p.grad is not None]
        self.grad_norms[self.trainer.global_step] = float(torch.stack(norms).norm()) if norms else math.nan

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after[batch_idx] = flat(self)
        self.sched_epochs[batch_idx] = self.lr_schedulers().last_epoch  # type: ignore[union-attr]

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
        warmup = max(self.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().clone() for p in module.parameters()])
