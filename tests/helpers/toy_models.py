"""Tiny real models with real fault injection, shared by the GradientHealth tests.

Faults are injected the way they happen in real runs: a training_step that returns NaN/inf, a gradient hook
that writes NaN/inf into one parameter's gradient during backward, a weight overwritten with NaN, a batch
whose targets are all ``ignore_index``, an LR that makes the update non-finite.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

VOCAB, DIM, SEQ, BATCH = 16, 8, 6, 4
FAULTS = ("nan_loss", "inf_loss", "nan_grad", "inf_grad", "nan_param", "nan_param_via_data", "loss_spike", "nan_hidden")


class PreBatched(Dataset):
    """Token batches (dicts with input_ids/labels); item i is batch i. Use ``DataLoader(batch_size=None)``."""

    def __init__(self, n_batches: int, seed: int = 0, empty_at: Iterable[int] = ()) -> None:
        g = torch.Generator().manual_seed(seed)
        empty = set(empty_at)
        self.items: list[dict[str, Tensor]] = []
        for i in range(n_batches):
            ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
            labels = torch.roll(ids, -1, dims=1)
            labels[:, :2] = -100  # "prompt" tokens are not supervised
            labels[:, -1] = -100
            if i in empty:
                labels[:] = -100  # every target masked: a batch with no supervised tokens
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


def lm_loader(n_batches: int = 8, empty_at: Iterable[int] = (), seed: int = 0) -> DataLoader:
    return DataLoader(PreBatched(n_batches, seed=seed, empty_at=empty_at), batch_size=None, shuffle=False)


def fp16_scaler_plugin(**scaler_kwargs: Any) -> Any:
    """Real fp16 autocast with a real GradScaler on CPU: Lightning turns ``precision="16-mixed"`` on CPU into bf16
    and creates no scaler there, so the plugin is passed explicitly."""
    from lightning.pytorch.plugins import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", **scaler_kwargs))


def flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().clone() for p in module.parameters()])


class DecayEverything(torch.optim.Optimizer):
    """A third-party-style optimiser that decays every parameter, with or without a gradient."""

    def __init__(self, params: Any, lr: float = 0.05, weight_decay: float = 0.1) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
                state = self.state[p]
                state["n"] = state.get("n", 0) + 1
        return loss


class ToyLM(L.LightningModule):
    """Embedding -> Linear -> tanh -> LM head over a 16-token vocabulary, with opt-in faults at chosen steps."""

    def __init__(
        self,
        fault: str | None = None,
        fault_steps: Iterable[int] = (),
        optimizer: str = "adamw",
        lr: float = 0.05,
        weight_decay: float = 0.1,
        nan_lr_at: int | None = None,
        fault_rank: int | None = None,
        loss_norm: str = "tokens",
    ) -> None:
        super().__init__()
        assert fault is None or fault in FAULTS, fault
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB)
        self.fault, self.fault_steps, self.fault_rank = fault, set(fault_steps), fault_rank
        self.optimizer_name, self.lr, self.weight_decay, self.nan_lr_at = optimizer, lr, weight_decay, nan_lr_at
        # "tokens": mean over supervised tokens (NaN for a batch without any); "fixed": sum / fixed count (0 then)
        self.loss_norm = loss_norm
        self.hidden.weight.register_hook(self._grad_fault)
        self.hidden.register_forward_hook(self._forward_fault)
        # what really happened, per batch index (== global step in these single-epoch runs)
        self.before: dict[int, Tensor] = {}
        self.after: dict[int, Tensor] = {}
        self.opt_before: dict[int, dict] = {}
        self.opt_after: dict[int, dict] = {}
        self.losses: dict[int, float] = {}
        self.grad_norms: dict[int, float] = {}
        self.module_grad_norms: dict[int, dict[str, float]] = {}

    # --- fault injection ---------------------------------------------------------------------------------------
    def _faulty(self) -> bool:
        if self._trainer is None or self.trainer.global_step not in self.fault_steps:
            return False
        return self.fault_rank is None or self.global_rank == self.fault_rank

    def _grad_fault(self, grad: Tensor) -> Tensor:
        if not self._faulty():
            return grad
        if self.fault == "nan_grad":
            grad = grad.clone()
            grad[0, 0] = math.nan  # one element of one parameter's gradient
            return grad
        if self.fault == "inf_grad":
            return torch.full_like(grad, math.inf)
        return grad

    def _forward_fault(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self.fault == "nan_hidden" and self._faulty():
            return output * math.nan  # the module's own output goes non-finite, from finite inputs
        return None

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(ids))))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self._faulty() and self.fault == "nan_param":
            with torch.no_grad():
                self.hidden.weight[0, 0] = math.nan
        if self._faulty() and self.fault == "nan_param_via_data":
            self.hidden.weight.data[0, 0] = math.nan  # .data writes do not bump the parameter's version counter
        ids, labels = _get(batch, "input_ids"), _get(batch, "labels")
        logits = self(ids).float()
        if self.loss_norm == "tokens":
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
        else:
            loss = F.cross_entropy(
                logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum"
            ) / labels.numel()
        if self._faulty() and self.fault == "nan_loss":
            loss = loss * math.nan
        elif self._faulty() and self.fault == "inf_loss":
            loss = loss * math.inf
        elif self._faulty() and self.fault == "loss_spike":
            loss = loss * 1000.0  # finite, just large: a gradient spike between two log points
        self.losses[batch_idx] = float(loss.detach())
        return loss

    # --- recording ---------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.before[batch_idx] = flat(self)
        self.opt_before[batch_idx] = _opt_state(self.optimizers().optimizer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # runs after GradientHealth's hook and before clipping: the same pre-clip, unscaled gradients
        step = self.trainer.global_step
        per_module: dict[str, float] = {}
        sq = 0.0
        for name, p in self.named_parameters():
            if p.grad is not None:
                v = float(p.grad.float().norm()) ** 2
                sq += v
                module = name.rsplit(".", 1)[0]
                per_module[module] = per_module.get(module, 0.0) + v
        self.grad_norms[step] = math.sqrt(sq)
        self.module_grad_norms[step] = {k: math.sqrt(v) for k, v in per_module.items()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after[batch_idx] = flat(self)
        self.opt_after[batch_idx] = _opt_state(self.optimizers().optimizer)

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "decay_everything":
            opt = DecayEverything(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(self.optimizer_name)
        if self.nan_lr_at is None:
            return opt
        bad = self.nan_lr_at
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: math.nan if s == bad else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _get(batch: Any, key: str) -> Tensor:
    return batch[key] if isinstance(batch, dict) else getattr(batch, key)


@dataclass
class TokenBatch:
    """A batch with attribute access only (not a Mapping)."""

    input_ids: Tensor
    labels: Tensor


class AttrBatches(Dataset):
    def __init__(self, n_batches: int, empty_at: Iterable[int] = ()) -> None:
        self.inner = PreBatched(n_batches, empty_at=empty_at)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> TokenBatch:
        return TokenBatch(**self.inner[i])


def _opt_state(opt: torch.optim.Optimizer) -> dict:
    return {i: copy.deepcopy(dict(opt.state[p])) for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}


def states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if a[k].keys() != b[k].keys():
            return False
        for name, v in a[k].items():
            w = b[k][name]
            if isinstance(v, Tensor):
                if not torch.equal(v, w):
                    return False
            elif v != w:
                return False
    return True


def lm_eval_loss(model: ToyLM, n_batches: int = 4) -> float:
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in lm_loader(n_batches, seed=123):
            logits = model(batch["input_ids"]).float()
            losses.append(F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=-100))
    return float(torch.stack(losses).mean())


# --- a non-SFT module: an MLP classifier on random, linearly separable data ---------------------------------------
def blobs(n: int = 256, dim: int = 8, seed: int = 0, nan_rows: Iterable[int] = ()) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    y = (x @ w > 0).long()
    x = x + 0.5 * (2 * y[:, None] - 1) * w / w.norm()  # push the classes apart
    for r in nan_rows:
        x[r, 0] = math.nan  # a corrupt input row
    return x, y


class MLPClassifier(L.LightningModule):
    def __init__(self, dim: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 2))
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
