"""Training-step overhead of ``GradientHealth()`` (default arguments) on the real SFT workload.

    python -m benchmarks.callback_overhead [--steps 30] [--pairs 5] [--warmup 3] [--model embedded] [--devices 1]
                                          [--out benchmarks/results/callback_overhead-<machine kind>.json]

With ``--devices 2`` the same pairs run under DDP (gloo, one process per device, the global batch split between
them, so a step trains what a single-device step does); results go to ``callback_overhead_ddp-<kind>.json``.
Every rank runs every pair in the same order (one process group for the whole bench); rank 0's clock is reported:
a DDP step ends at the gradient all-reduce, so the ranks step in lockstep.

What is measured: the wall time of each optimiser step, from ``on_train_batch_start`` (a timing callback placed
first, so it runs before GradientHealth's hook) to ``on_train_batch_end`` (a timing callback placed last, so
GradientHealth's post-update weight check is inside). That covers forward, backward, the callback's norm pass and
host sync, clipping and the AdamW update; data loading and logger flushes are outside, identical in both variants.

How: ``--pairs`` pairs of runs, one with the callback and one without, alternating which goes first (with/without,
then without/with, ...) so that drift (thermal, page cache, other load) does not favour one variant. Each run drops
its first ``--warmup`` steps, and one short discarded run of each variant comes first. Per pair: the median step time of each variant and ``ratio = with / without``; over
pairs: min/median/max of the ratios. Target: median overhead < 3 %. Second estimate, less sensitive to bursts of
machine noise: both runs of a pair see the same batches, so per pair the median of step j's with/without ratio.

Fairness: the base model and tokenizer are loaded once per process and shared; every run gets a fresh
``SFTModule`` whose LoRA adapter is reset to the same initial weights, a fresh optimiser and LR schedule, the same
seed and the same batches in the same order (one ``SFTDataModule``, sampler epoch 0). The per-step training losses
of the two variants are compared as a check that the callback does not change training.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from benchmarks.common import embedded_settings, machine_description, result_path, same_batch_ratio  # noqa: E402
from callbacks import GradientHealth  # noqa: E402
from sft_lightning.data.datamodule import SFTDataModule  # noqa: E402
from sft_lightning.module import DEFAULT_TARGET_MODULES, SFTModule  # noqa: E402

WITH, WITHOUT = "with_callback", "without_callback"
# the settings of configs/embedded.yaml (read, not copied, so they cannot drift apart)
_SETTINGS = embedded_settings()
_MODEL = _SETTINGS["model"]
LORA = dict(
    lora_r=_MODEL["lora_r"],
    lora_alpha=_MODEL["lora_alpha"],
    lora_dropout=_MODEL["lora_dropout"],
    target_modules=list(_MODEL.get("target_modules") or DEFAULT_TARGET_MODULES),
)
BASE_DTYPE = _MODEL.get("base_dtype", "float32")
LEARNING_RATE = _MODEL["learning_rate"]
WARMUP_RATIO = _MODEL["warmup_ratio"]
GRADIENT_CLIP_VAL = _SETTINGS["trainer"]["gradient_clip_val"]
LOG_EVERY_N_STEPS = _SETTINGS["trainer"].get("log_every_n_steps", 50)
SEED = _SETTINGS["seed"]
TARGET_OVERHEAD = 0.03


# ------------------------------------------------------------------------------------------------ timing
class StepTimer:
    """Two callbacks sharing one clock: ``start`` goes first in the callback list, ``end`` last."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []
        self._t0: float | None = None
        timer = self

        class _Start(Callback):
            def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
                timer._t0 = time.perf_counter()

        class _End(Callback):
            def on_train_batch_end(
                self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                t1 = time.perf_counter()
                assert timer._t0 is not None
                timer.times.append(t1 - timer._t0)
                timer._t0 = None
                timer.losses.append(float(outputs["loss"]))  # after the clock stopped

        self.start, self.end = _Start(), _End()


# ------------------------------------------------------------------------------------- shared base model
class SharedModel:
    """Load the base model + tokenizer once; hand out fresh SFTModules with identically initialised LoRA."""

    def __init__(self, model: str, max_steps: int) -> None:
        # every model.* setting of configs/embedded.yaml (base dtype, attention kernel, compile, LoRA, lr)
        self.kwargs: dict[str, Any] = dict(_MODEL, model=model, num_logged_samples=0)
        L.seed_everything(SEED, verbose=False)
        proto = SFTModule(**self.kwargs)
        t0 = time.perf_counter()
        proto.configure_model()  # the real code path: load base, wrap with peft, LoRA params fp32
        self.load_s = time.perf_counter() - t0
        assert proto.model is not None
        self.peft, self.tokenizer = proto.model, proto.tokenizer
        self.initial = {n: p.detach().clone() for n, p in self.peft.named_parameters() if p.requires_grad}
        self.n_trainable = sum(p.numel() for p in self.initial.values())
        self.n_total = sum(p.numel() for p in self.peft.parameters())

    def fresh_module(self) -> SFTModule:
        module = SFTModule(**self.kwargs)
        with torch.no_grad():
            for name, p in self.peft.named_parameters():
                if p.requires_grad:
                    p.copy_(self.initial[name])
                    p.grad = None
        module.model = self.peft  # configure_model() then returns early: nothing is reloaded
        module.tokenizer = self.tokenizer
        return module


def run_once(
    shared: SharedModel, data: SFTDataModule, with_callback: bool, args: argparse.Namespace, workdir: Path, tag: str
) -> StepTimer:
    timer = StepTimer()
    callbacks: list[Callback] = [timer.start, *([GradientHealth()] if with_callback else []), timer.end]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        gradient_clip_val=GRADIENT_CLIP_VAL,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        logger=CSVLogger(str(workdir), name=tag),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        callbacks=callbacks,
    )
    module = shared.fresh_module()
    L.seed_everything(SEED, verbose=False)
    trainer.fit(module, datamodule=data)
    if len(timer.times) != args.warmup + args.steps:
        raise RuntimeError(f"{tag}: expected {args.warmup + args.steps} timed steps, got {len(timer.times)}")
    del trainer
    gc.collect()  # the run's DDP wrapper, and the gradient hooks it holds on the shared model, go with it
    return timer


# ------------------------------------------------------------------------------------------ environment
def machine(args: argparse.Namespace) -> dict[str, Any]:
    return {**machine_description("cpu"), "precision": args.precision, "batch_size": args.batch_size, "devices": args.devices}


def rank() -> int:
    """This process's rank; before the group starts, the one Lightning's launcher gave it (0 for the first)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("LOCAL_RANK", "0"))


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run, after the warm-up (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every run (default 3)")
    p.add_argument("--pairs", type=int, default=5, help="with/without pairs, alternating order (default 5)")
    p.add_argument("--model", default="embedded", help="model name as SFTModule takes it (default embedded)")
    p.add_argument("--precision", default=None, help="Trainer precision (default: the machine's, as embedded.yaml runs it)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16, as embedded.yaml); under"
                   " DDP the global batch, split between the processes")
    p.add_argument("--max-length", type=int, default=None, help="data.max_length (default: embedded.yaml's; 256 for tiny-random)")
    p.add_argument("--devices", type=int, default=1, help="processes: 1 (default) or more for DDP on gloo")
    p.add_argument(
        "--out",
        default=None,
        help="JSON results path (default benchmarks/results/callback_overhead-<kind>.json, kind as machine_kind: "
        "cpu-amx, cpu-avx512bf16, cpu-avx2, cuda, ...: one file per machine kind)",
    )
    args = p.parse_args(argv)
    args.precision = args.precision or _SETTINGS["trainer"]["precision"]
    if args.steps < 1 or args.pairs < 1 or args.warmup < 0 or args.batch_size < 1 or args.devices < 1:
        p.error("--steps, --pairs, --batch-size and --devices must be >= 1, --warmup >= 0")
    if args.batch_size % args.devices:
        p.error(f"--batch-size {args.batch_size} does not split evenly between {args.devices} devices")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")

    wall0 = time.perf_counter()
    n_steps = args.warmup + args.steps
    per_device = args.batch_size // args.devices
    max_length = args.max_length or _SETTINGS.get("data", {}).get("max_length", 128)
    data = SFTDataModule(
        train_size=args.batch_size * n_steps, val_size=8, batch_size=per_device, tokenizer=args.model, seed=SEED, max_length=max_length
    )
    data.setup("fit")  # tokenise once; later setup() calls return early
    shared = SharedModel(args.model, n_steps)
    def say(*values: Any, **kwargs: Any) -> None:  # rank 0 only, asked at each call: the group starts with the first fit
        if rank() == 0:
            print(*values, **kwargs)

    say(
        f"model {args.model}: {shared.n_total / 1e6:.1f}M parameters, {shared.n_trainable / 1e6:.2f}M trainable (LoRA r={LORA['lora_r']}),"
        f" loaded in {shared.load_s:.1f}s; {args.pairs} pairs x 2 runs x ({args.warmup} warm-up + {args.steps} timed) steps,"
        f" batch {args.batch_size} over {args.devices} process(es), {args.precision}",
        flush=True,
    )

    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callback_overhead_") as tmp:
        # one short, discarded run of each variant: the process's first steps (allocator growth, oneDNN
        # primitive caches, lazy imports) would otherwise land on whichever variant runs first in pair 0
        short = argparse.Namespace(**{**vars(args), "steps": 3})
        for variant in (WITH, WITHOUT):
            run_once(shared, data, variant == WITH, short, Path(tmp), f"discarded_{variant}")
        for i in range(args.pairs):
            order = (WITH, WITHOUT) if i % 2 == 0 else (WITHOUT, WITH)
            runs: dict[str, dict[str, Any]] = {}
            for variant in order:
                timer = run_once(shared, data, variant == WITH, args, Path(tmp), f"pair{i}_{variant}")
                timed = timer.times[args.warmup :]
                runs[variant] = {
                    "step_times_s": timer.times,  # all steps; the first `warmup` are excluded from the median
                    "median_s": statistics.median(timed),
                    "mean_s": statistics.fmean(timed),
                    "losses": timer.losses,
                }
            ratio = runs[WITH]["median_s"] / runs[WITHOUT]["median_s"]
            # both runs train on the same batches in the same order: step j against step j
            by_batch = same_batch_ratio(runs[WITH]["step_times_s"][args.warmup :], runs[WITHOUT]["step_times_s"][args.warmup :])
            same = runs[WITH]["losses"] == runs[WITHOUT]["losses"]
            pairs.append(
                {"pair": i, "order": list(order), "ratio": ratio, "same_batch_ratio": by_batch, "identical_losses": same, **runs}
            )
            say(
                f"pair {i}: {order[0]} first  without {runs[WITHOUT]['median_s'] * 1e3:8.1f} ms  with"
                f" {runs[WITH]['median_s'] * 1e3:8.1f} ms  ratio {ratio:.4f} (same batch {by_batch:.4f})  losses identical: {same}",
                flush=True,
            )

    if rank() != 0:
        return 0
    ratios = [p["ratio"] for p in pairs]
    summary = {
        "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "median_overhead_pct": (statistics.median(ratios) - 1.0) * 100.0,
        "target_overhead_pct": TARGET_OVERHEAD * 100.0,
        "meets_target": statistics.median(ratios) - 1.0 < TARGET_OVERHEAD,
        "same_batch_ratio_min": min(p["same_batch_ratio"] for p in pairs),
        "same_batch_ratio_median": statistics.median(p["same_batch_ratio"] for p in pairs),
        "same_batch_ratio_max": max(p["same_batch_ratio"] for p in pairs),
        "all_losses_identical": all(p["identical_losses"] for p in pairs),
        "wall_s": time.perf_counter() - wall0,
    }
    result = {
        "benchmark": "GradientHealth() step-time overhead (default arguments)" + (" under DDP" if args.devices > 1 else ""),
        "machine": machine(args),
        "config": {
            "model": args.model,
            "steps": args.steps,
            "warmup_steps_excluded": args.warmup,
            "pairs": args.pairs,
            "batch_size": args.batch_size,
            "devices": args.devices,
            "strategy": "ddp (gloo)" if args.devices > 1 else "single device",
            "torch_threads_per_process": torch.get_num_threads(),
            "precision": args.precision,
            "base_dtype": BASE_DTYPE,
            "attn_implementation": _MODEL.get("attn_implementation"),
            "compile": bool(_MODEL.get("compile", False)),
            "max_length": data.hparams.max_length,
            "gradient_clip_val": GRADIENT_CLIP_VAL,
            "log_every_n_steps": LOG_EVERY_N_STEPS,
            "learning_rate": LEARNING_RATE,
            "seed": SEED,
            **LORA,
            "n_parameters": shared.n_total,
            "n_trainable": shared.n_trainable,
            "timed_span": "on_train_batch_start (first callback) -> on_train_batch_end (last callback)",
        },
        "pairs": pairs,
        "summary": summary,
    }
    out = Path(args.out or result_path("callback_overhead_ddp" if args.devices > 1 else "callback_overhead", "cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'pair':>4}  {'order':<24}  {'without ms':>10}  {'with ms':>10}  {'ratio':>7}  {'overhead':>8}")
    for p in pairs:
        order = " -> ".join("with" if v == WITH else "without" for v in p["order"])
        print(
            f"{p['pair']:>4}  {order:<24}  {p[WITHOUT]['median_s'] * 1e3:>10.1f}  {p[WITH]['median_s'] * 1e3:>10.1f}"
            f"  {p['ratio']:>7.4f}  {(p['ratio'] - 1) * 100:>+7.2f}%"
        )
    print(
        f"ratio over {len(pairs)} pairs: min {summary['ratio_min']:.4f}  median {summary['ratio_median']:.4f}"
        f"  max {summary['ratio_max']:.4f}  -> median overhead {summary['median_overhead_pct']:+.2f}%"
        f" (target < {TARGET_OVERHEAD * 100:.0f}%: {'PASS' if summary['meets_target'] else 'FAIL'})"
    )
    print(
        f"same batch, step by step: min {summary['same_batch_ratio_min']:.4f}  median {summary['same_batch_ratio_median']:.4f}"
        f"  max {summary['same_batch_ratio_max']:.4f}"
    )
    print(f"losses identical with/without the callback in every pair: {summary['all_losses_identical']}")
    print(f"machine: {result['machine']['cpu_model']}, {result['machine']['cpu_count']} cores, torch {torch.__version__};"
          f" wall {summary['wall_s']:.0f}s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
