"""GradientHealth's fixed cost per optimiser step on small models, where a millisecond is most of a step.

    python -m benchmarks.callback_overhead_small [--pairs 7] [--steps 300] [--out benchmarks/results/...]

Models (plain Lightning modules, synthetic data, SGD, fp32, one thread): ``mlp`` (two layers, 64 -> 256 -> 10,
batch 32: a ~1 ms step), ``mlp_bn`` (the same with BatchNorm: buffers kept each step), ``gan`` (two optimisers
under manual optimisation), ``mid`` (a 2-layer Transformer encoder, d=128, batch 16 x 64 tokens: tens of ms).

What is measured: the wall time of each batch from ``on_train_batch_start`` (a timing callback first in the list)
to ``on_train_batch_end`` (a timing callback last), so the callback's hooks are inside and data loading outside.
How: ``--pairs`` pairs of runs with and without ``GradientHealth()`` (default arguments), alternating which goes
first; per run the median step after 30 warm-up steps; per pair the difference and the ratio; over pairs the
medians. The embedded LLM's row comes from ``python -m benchmarks.callback_overhead``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import machine_description, result_path
from callbacks import GradientHealth

WARMUP = 30


class MLP(L.LightningModule):
    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)]
        if batch_norm:
            layers.insert(1, nn.BatchNorm1d(256))
        self.net = nn.Sequential(*layers)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TwoOptimizers(L.LightningModule):
    """GAN-shaped: two networks, two optimisers, both stepped in ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.g = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
        self.d = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        for loss, opt in ((self.d(self.g(x)).mean(), opt_g), (self.d(x).mean() - self.d(self.g(x).detach()).mean(), opt_d)):
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.g.parameters(), lr=0.01), torch.optim.SGD(self.d.parameters(), lr=0.01)]


class Encoder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 1000)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        ids, _ = batch
        logits = self.head(self.body(self.embed(ids)))
        return F.cross_entropy(logits[:, :-1].reshape(-1, 1000), ids[:, 1:].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(name: str, steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    if name == "mid":
        ids = torch.randint(0, 1000, (steps * 16, 64), generator=g)
        return DataLoader(TensorDataset(ids, ids), batch_size=16)
    x = torch.randn(steps * 32, 64, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (steps * 32,), generator=g)), batch_size=32)


MODELS = {"mlp": lambda: MLP(), "mlp_bn": lambda: MLP(batch_norm=True), "gan": TwoOptimizers, "mid": Encoder}


class Clock:
    """Two callbacks sharing one clock: ``start`` first in the callback list, ``end`` last."""

    def __init__(self) -> None:
        self.times: list[float] = []
        clock = self

        class Start(L.Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                clock.t0 = time.perf_counter()

        class End(L.Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                clock.times.append(time.perf_counter() - clock.t0)

        self.start, self.end = Start(), End()


def run(name: str, with_callback: bool, steps: int) -> float:
    """The median batch time of one run, in seconds."""
    torch.manual_seed(0)
    clock = Clock()
    callbacks = [clock.start, *([GradientHealth()] if with_callback else []), clock.end]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps * (2 if name == "gan" else 1), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(MODELS[name](), data(name, steps))
    return statistics.median(clock.times[WARMUP:])


def pairs(name: str, n: int, steps: int) -> dict[str, Any]:
    run(name, True, WARMUP + 10)
    run(name, False, WARMUP + 10)
    with_t, without_t = [], []
    for i in range(n):
        for flag in ((True, False) if i % 2 == 0 else (False, True)):
            (with_t if flag else without_t).append(run(name, flag, steps))
    added = [a - b for a, b in zip(with_t, without_t)]
    ratios = [a / b for a, b in zip(with_t, without_t)]
    return {
        "step_ms_without": statistics.median(without_t) * 1e3,
        "added_ms_per_batch": statistics.median(added) * 1e3,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": n,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    results: dict[str, Any] = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "models": {}}
    for name in args.models.split(","):
        steps = args.steps if name != "mid" else max(60, args.steps // 5)
        results["models"][name] = row = pairs(name, args.pairs, steps)
        print(f"{name:7s} step {row['step_ms_without']:.3f} ms, added {row['added_ms_per_batch']:.3f} ms per batch, "
              f"ratio {row['ratio_median']:.3f} ({row['ratio_min']:.3f} - {row['ratio_max']:.3f})", flush=True)
    out = Path(args.out) if args.out else result_path("callback_overhead_small")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
