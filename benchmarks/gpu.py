"""``make gpu-check``: the requested ``16-mixed`` path proven on a GPU, in one command.

    python -m benchmarks.gpu [--device auto|cuda|cpu] [--model embedded] [--fit-steps 300] [--val-size 300]
                             [--questions 1000] [--steps 16] [--repeats 3] [--out PATH] [--readme docs/performance.md]

On a CUDA machine it:

1. fine-tunes the embedded model with ``configs/embedded.yaml``'s model and data settings and
   ``configs/sft.yaml``'s trainer settings (``16-mixed``: Lightning's GradScaler; clip 1.0), GradientHealth on,
   for ``--fit-steps`` steps: every logged loss finite, the loss scale logged, no trip; the exported adapter is
   loaded back with ``PeftModel.from_pretrained`` and must equal the trained weights; accuracy after the fit;
2. runs GradientHealth's scaler cases on the device: a transient overflow continues (one scaler back-off, no trip),
   a persistent one aborts with the scale-collapse diagnosis, the seed scenario (fp16 trainable weights,
   ``16-true``) stops at its first bad step;
3. measures training tokens/s against the Hugging Face Trainer + peft recipe with ``fp16=True`` and dynamic
   padding (``benchmarks.train_throughput``: same data, batch, LoRA settings, paired rounds), generate + score of
   ``--questions`` questions (``benchmarks.validation_speed``), and peak GPU memory of each phase;
4. writes ``--out`` (device name, versions, every figure and check) and, with ``--readme``, the GPU table in docs/performance.md.

Without CUDA (``--device auto``) it prints "no CUDA device: skipped" and exits 0. ``--device cpu`` runs the same
code on the CPU (a real fp16 GradScaler plugin stands in for Lightning's CUDA one; the throughput and validation
arms use ``bf16-mixed``, since the HF recipe's ``fp16=True`` needs CUDA): CI runs it with the tiny model, so the
script cannot rot between runs on a GPU. Exit status 1 when a correctness check fails; the speed bars are
reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import EMBEDDED_CONFIG, RESULTS_DIR, ROOT, apply_overrides, embedded_settings, quiet, write_json

SFT_CONFIG = ROOT / "configs" / "sft.yaml"
README_START, README_END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"
SPEED_BAR = 1.5  # sft-lightning tokens/s over the HF Trainer + peft fp16 recipe, on the same GPU
SKIPPED = "no CUDA device: skipped"


# ------------------------------------------------------------------------------------------------ plumbing
def trainer_precision(device: str) -> dict[str, Any]:
    """``16-mixed`` as the request has it: on CUDA Lightning adds its GradScaler; on CPU Lightning would turn
    16-mixed into bf16, so the same fp16 autocast + GradScaler is passed as an explicit plugin."""
    import torch
    from lightning.pytorch.plugins import MixedPrecision

    if device == "cuda":
        return {"precision": "16-mixed"}
    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}


def peak_memory_mb(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def versions() -> dict[str, str]:
    import lightning
    import peft
    import torch
    import transformers

    out = {"torch": torch.__version__, "lightning": lightning.__version__, "transformers": transformers.__version__}
    out["peft"] = peft.__version__
    out["cuda"] = str(torch.version.cuda)
    return out


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    from benchmarks.common import cpu_model

    return f"CPU: {cpu_model()}"


# ------------------------------------------------------------------------------------------ 1. the short fit
def short_fit(args: argparse.Namespace, device: str, workdir: Path) -> dict[str, Any]:
    """Fine-tune with sft.yaml's trainer settings; check loss, loss scale, trips, the adapter round trip."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from callbacks import GradientHealth
    from sft_lightning.data.datamodule import SFTDataModule
    from sft_lightning.module import SFTModule

    settings = model_and_data(args)
    trainer_cfg = embedded_settings(SFT_CONFIG)["trainer"]
    L.seed_everything(0, verbose=False)
    module = SFTModule(**settings["model"])
    data = SFTDataModule(**dict(settings["data"], val_size=args.val_size, unseen_val_size=0, extra_val_files=None))
    health = GradientHealth(on_nonfinite="abort")
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_steps=args.fit_steps,
        gradient_clip_val=trainer_cfg["gradient_clip_val"],
        log_every_n_steps=min(int(trainer_cfg.get("log_every_n_steps", 10)), max(1, args.fit_steps // 4)),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=CSVLogger(str(workdir), name="fit"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        callbacks=[health],
        **trainer_precision(device),
    )
    reset_peak_memory(device)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - t0
    fit_peak = peak_memory_mb(device)
    adapter_dir = module.export_dir  # now: validate() below attaches the module to a logger-less trainer
    metrics = read_metrics(Path(trainer.log_dir or workdir) / "metrics.csv")
    losses = metrics.get("train/loss", [])
    scales = metrics.get("grad_health/loss_scale", [])
    validator = L.Trainer(
        accelerator=device, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        **trainer_precision(device),
    )  # fmt: skip
    val = validator.validate(module, datamodule=data, verbose=False)[0]
    roundtrip = adapter_roundtrip(module, adapter_dir, torch.device(device))
    return {
        "steps": trainer.global_step,
        "seconds": fit_s,
        "logged_losses": len(losses),
        "all_losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "loss_scale_logged": bool(scales),
        "loss_scale_last": scales[-1] if scales else None,
        "scaler_skipped_steps": health.scaler_skipped_steps,
        "trips": len(health.trips),
        "adapter": str(adapter_dir),
        "adapter_roundtrip_equal": roundtrip,
        "val_accuracy": float(val["val/accuracy"]),
        "val_answer_rate": float(val["val/answer_rate"]),
        "val_questions": args.val_size,
        "peak_memory_mb": fit_peak,
    }


def model_and_data(args: argparse.Namespace) -> dict[str, Any]:
    """embedded.yaml's model and data settings (worked answers, calculator), with this run's overrides."""
    settings = apply_overrides(embedded_settings(EMBEDDED_CONFIG), args.set)
    settings["model"]["model"] = settings["data"]["tokenizer"] = args.model
    return settings


def read_metrics(path: Path) -> dict[str, list[float]]:
    """Every logged value of a CSVLogger file, per key, in step order."""
    import csv

    out: dict[str, list[float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if value not in ("", None) and key not in ("step", "epoch"):
                    out.setdefault(key, []).append(float(value))
    return out


def adapter_roundtrip(module: Any, adapter_dir: Path, device: Any) -> bool:
    """The exported adapter, loaded back into a fresh base model with peft, holds exactly the trained weights."""
    import torch
    from peft import PeftModel

    from sft_lightning.models.loading import load_model

    base = load_model(module.hparams.model, module.hparams.get("cache_dir"))
    loaded = PeftModel.from_pretrained(base, str(adapter_dir)).to(device)
    trained = {n: p for n, p in module.model.named_parameters() if p.requires_grad}
    reloaded = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    if set(reloaded) != set(trained):
        return False
    return all(torch.equal(trained[n].detach().float(), reloaded[n].detach().float()) for n in trained)


# ----------------------------------------------------------------------------------- 2. the scaler cases
def scaler_cases(device: str, workdir: Path) -> dict[str, Any]:
    """GradientHealth against the device's real GradScaler, and the seed scenario.

    A GradScaler also backs off on its own in the first steps (its initial scale is 65536), so the injected
    overflows are judged against a control run on the same data and seed: one more back-off, and no trip.
    """
    from callbacks.gradient_health import decide as dx

    control = overflow_run(device, workdir / "control", steps=(), max_consecutive_skipped=20)
    transient = overflow_run(device, workdir / "transient", steps=(6,), max_consecutive_skipped=20)
    persistent = overflow_run(device, workdir / "persistent", steps=range(6, 100), max_consecutive_skipped=3)
    seed = seed_scenario(device, workdir / "seed")
    return {
        "transient_overflow": {
            **transient,
            "control_scaler_skipped": control["scaler_skipped"],
            "pass": transient["error"] is None
            and transient["trips"] == 0
            and transient["step"] == control["step"]
            and transient["scaler_skipped"] == control["scaler_skipped"] + 1,
        },
        "persistent_overflow": {
            **persistent,
            "pass": (persistent["error"] or "").startswith("fp16 overflow: scale collapsed") and persistent["step"] >= 6,
        },
        "seed_scenario": {**seed, "pass": seed["error"] == dx.D_PARAMS_AFTER and seed["step"] == 1},
    }


def overflow_run(device: str, workdir: Path, steps: Any, max_consecutive_skipped: int) -> dict[str, Any]:
    """A small regression model whose gradients are inf at ``steps`` (a hook on one weight), under 16-mixed,
    for 12 steps."""
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from callbacks import GradientHealth, NonFiniteTrainingError

    bad = set(steps)

    class Overflowing(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
            self.net[0].weight.register_hook(self._inject)

        def _inject(self, grad: torch.Tensor) -> torch.Tensor:
            return torch.full_like(grad, math.inf) if self.trainer.global_step in bad else grad

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x).squeeze(-1).float(), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    health = GradientHealth(
        on_nonfinite="skip", max_consecutive_skipped=max_consecutive_skipped, label_key=None, report_dir=str(workdir)
    )
    trainer = L.Trainer(
        accelerator=device, devices=1, max_steps=12, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(workdir), callbacks=[health],
        **trainer_precision(device),
    )  # fmt: skip
    error = None
    try:
        trainer.fit(Overflowing(), DataLoader(TensorDataset(x, x.sum(-1) / 4), batch_size=8))
    except NonFiniteTrainingError as err:
        error = err.diagnosis
    return {"error": error, "step": trainer.global_step, "trips": len(health.trips), "scaler_skipped": health.scaler_skipped_steps}


def seed_scenario(device: str, workdir: Path) -> dict[str, Any]:
    """The original failure: fp16 trainable weights (``16-true``): stopped at the first step whose weights broke."""
    import lightning as L

    from callbacks import GradientHealth, NonFiniteTrainingError
    from sft_lightning.data.datamodule import SFTDataModule
    from sft_lightning.module import SFTModule

    L.seed_everything(0, verbose=False)
    module = SFTModule(model="tiny-random", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=3e-3, max_new_tokens=4)
    data = SFTDataModule(train_size=64, val_size=8, batch_size=8, eval_batch_size=8, tokenizer="tiny-random", max_length=160)
    trainer = L.Trainer(
        accelerator=device, devices=1, precision="16-true", max_steps=6, gradient_clip_val=1.0, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(workdir), callbacks=[GradientHealth(report_dir=str(workdir))],
    )  # fmt: skip
    try:
        trainer.fit(module, datamodule=data)
    except NonFiniteTrainingError as err:
        return {"error": err.diagnosis, "step": err.global_step}
    return {"error": None, "step": trainer.global_step}


# ---------------------------------------------------------------------------------------- 3. speed
def throughput(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Training tokens/s, sft-lightning vs HF Trainer + peft (dynamic padding), paired rounds in one process."""
    from benchmarks import train_throughput

    options = SimpleNamespace(
        arms=["sftl", "hf_dynamic"], steps=args.steps, padded_steps=args.steps, warmup=2, repeats=args.repeats,
        train_size=None, prime_steps=2, callback_pairs=0, callback_steps=1, config=EMBEDDED_CONFIG, model=args.model,
        precision="16-mixed" if device == "cuda" else "bf16-mixed", accelerator=device, threads=None, set=args.set,
    )  # fmt: skip
    result = train_throughput.measure(options, log=lambda line: print(line, flush=True))
    ratio = result["ratios"].get("sftl/hf_dynamic", {})
    return {
        "precision": options.precision,
        "tokens_per_s": {arm: result["arms"][arm]["tokens_per_s"]["median"] for arm in options.arms},
        "ratio_sftl_over_hf_dynamic": ratio.get("median"),
        "ratio_spread": {k: ratio.get(k) for k in ("min", "max")},
        "peak_memory_mb": {arm: result["arms"][arm].get("peak_gpu_mb") for arm in options.arms},
        "repeats": args.repeats,
        "steps": args.steps,
    }


def validation(args: argparse.Namespace, device: str, adapter: str | None) -> dict[str, Any]:
    """Generate + score ``--questions`` questions with the fitted adapter, and the plain ``model.generate`` loop."""
    from benchmarks import validation_speed

    options = SimpleNamespace(
        questions=args.questions, val_repeats=1, adapter=adapter or "none", val_train_size=64, config=EMBEDDED_CONFIG,
        model=args.model, precision="16-mixed" if device == "cuda" else "bf16-mixed", accelerator=device,
        threads=None, set=args.set,
    )  # fmt: skip
    reset_peak_memory(device)
    result = validation_speed.measure(options, log=lambda line: print(line, flush=True))
    seconds = result["seconds"]
    return {
        "questions": args.questions,
        "generate_and_score_s": seconds["sftl_generate"]["median"],
        "validate_s": seconds["sftl_validate"]["median"],
        "plain_generate_loop_s": seconds["hf_generate"]["median"],
        "accuracy": result["rounds"][-1]["runs"]["sftl_generate"]["accuracy"],
        "peak_memory_mb": peak_memory_mb(device),
    }


# ---------------------------------------------------------------------------------------- the report
def checks(fit: dict[str, Any], cases: dict[str, Any]) -> dict[str, bool]:
    """Correctness: these decide the exit status."""
    return {
        "fit_all_losses_finite": fit["all_losses_finite"],
        "fit_loss_scale_logged": fit["loss_scale_logged"],
        "fit_no_trip": fit["trips"] == 0,
        "adapter_exported_and_loaded_back": fit["adapter_roundtrip_equal"],
        **{f"scaler_case_{name}": case["pass"] for name, case in cases.items()},
    }


def readme_table(result: dict[str, Any]) -> str:
    fit, speed, val = result["fit"], result["throughput"], result["validation"]
    rows = [
        ("device", result["device"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in result["versions"].items())),
        (f"short fit ({fit['steps']} steps, 16-mixed, clip 1.0)",
         f"losses finite: {fit['all_losses_finite']}, last loss scale {fit['loss_scale_last']}, "
         f"scaler back-offs {fit['scaler_skipped_steps']}, trips {fit['trips']}, {fit['seconds']:.0f} s"),
        ("adapter exported and loaded back (peft)", str(fit["adapter_roundtrip_equal"])),
        (f"accuracy after the fit ({fit['val_questions']} val questions)", f"{fit['val_accuracy']:.3f} (answer rate {fit['val_answer_rate']:.3f})"),
        ("scaler cases: transient / persistent / seed scenario",
         " / ".join("pass" if c["pass"] else "FAIL" for c in result["scaler_cases"].values())),
        ("training tokens/s: sft-lightning vs HF Trainer + peft fp16 (dynamic padding)",
         f"{speed['tokens_per_s']['sftl']:.0f} vs {speed['tokens_per_s']['hf_dynamic']:.0f}: "
         f"{speed['ratio_sftl_over_hf_dynamic']:.2f}x (bar {SPEED_BAR}x)"),
        (f"generate + score {val['questions']} questions", f"{val['generate_and_score_s']:.1f} s (plain generate loop {val['plain_generate_loop_s']:.1f} s)"),
        ("peak GPU memory: fit / validation", f"{fit['peak_memory_mb'] or 0:.0f} MB / {val['peak_memory_mb'] or 0:.0f} MB"),
    ]  # fmt: skip
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def write_readme(path: Path, table: str) -> None:
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {path} has no {README_START} ... {README_END} block for the GPU table")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA if present, else skip")
    p.add_argument("--model", default="embedded", help="model for the fit and the speed arms (default embedded)")
    p.add_argument("--fit-steps", type=int, default=300, help="optimiser steps of the short fit (default 300)")
    p.add_argument("--val-size", type=int, default=300, help="validation questions after the fit (default 300)")
    p.add_argument("--questions", type=int, default=1000, help="questions for generate + score (default 1000)")
    p.add_argument("--steps", type=int, default=16, help="timed steps per throughput run (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="paired throughput rounds (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override embedded.yaml")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/gpu.json on CUDA)")
    p.add_argument("--readme", type=Path, default=None, help="write the GPU table into this markdown page, e.g. docs/performance.md (CUDA runs only)")
    args = p.parse_args(argv)
    if min(args.fit_steps, args.val_size, args.questions, args.steps, args.repeats) < 1:
        p.error("--fit-steps, --val-size, --questions, --steps and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        print(SKIPPED)
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device. Fix: run it on a GPU machine with a CUDA build of torch.")
    quiet()
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        print(f"gpu-check on {device_name(device)}: 1/3 short fit ({args.fit_steps} steps)", flush=True)
        fit = short_fit(args, device, workdir)
        print(f"  {json.dumps({k: fit[k] for k in ('all_losses_finite', 'loss_scale_logged', 'trips', 'val_accuracy')})}", flush=True)
        print("gpu-check: 2/3 GradientHealth scaler cases", flush=True)
        cases = scaler_cases(device, workdir)
        print(f"  {json.dumps({k: v['pass'] for k, v in cases.items()})}", flush=True)
        print("gpu-check: 3/3 speed (training tokens/s vs HF Trainer + peft; generate + score)", flush=True)
        speed = throughput(args, device)
        val = validation(args, device, fit["adapter"])
    result = {
        "benchmark": "make gpu-check: 16-mixed fit, GradientHealth scaler cases, speed vs HF Trainer + peft",
        "device": device_name(device),
        "accelerator": device,
        "versions": versions(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "readme")},
        "fit": fit,
        "scaler_cases": cases,
        "throughput": speed,
        "validation": val,
        "checks": checks(fit, cases),
        "speed_bar": {
            "sftl_over_hf_fp16_at_least": SPEED_BAR,
            "met": (speed["ratio_sftl_over_hf_dynamic"] or 0) >= SPEED_BAR,
        },
        "wall_s": time.perf_counter() - wall0,
    }
    result["passed"] = all(result["checks"].values())
    from benchmarks.common import machine_description

    result["machine"] = machine_description(device)
    out = args.out or (RESULTS_DIR / "gpu.json" if device == "cuda" else None)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    table = readme_table(result)
    print(table)
    if args.readme is not None and device == "cuda":
        write_readme(args.readme, table)
        print(f"wrote the GPU table into {args.readme}")
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        print(f"gpu-check FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"gpu-check passed ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
