"""Where the time goes: torch.profiler over a few steady-state training steps and validation batches.

    python -m benchmarks.profile_steps [--arms sftl,hf_dynamic] [--warmup 2] [--steps 3] [--val-batches 2]

For each training arm (set up as in ``benchmarks.train_throughput``) it profiles ``--steps`` steps after
``--warmup``; for validation it profiles ``--val-batches`` batches of sft-lightning's generation path and of the
plain ``model.generate`` loop (as in ``benchmarks.validation_speed``). It prints, and writes to
``benchmarks/results/profile.txt`` (tables) and ``profile.json`` (the shares):

- the wall time, and the share of it inside aten ops (self time) by category: matmuls (mm/addmm/bmm), the LM
  head's share of the matmuls (the matmuls with the vocabulary as a dimension), attention, the optimiser, the
  rest; what is left is Python/framework time between ops (hooks, loops, collation, tokenisation);
- the top operators by self CPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, quiet

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm", "mkldnn::_linear_pointwise"}
ATTENTION = ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")


def categorise(prof, wall_s: float, vocab: int, top: int = 25) -> tuple[dict[str, Any], str]:
    """Shares of the profiled wall time by category, and a top-N operator table."""
    events = prof.events()
    totals: dict[str, float] = defaultdict(float)
    head = 0.0
    for e in events:
        name = e.name
        self_us = e.self_cpu_time_total
        if "CompiledFxGraph" in name:  # torch.compile'd regions: inductor's fused C++ kernels (self time)
            totals["compiled fused kernels"] += self_us
            continue
        if not name.startswith("aten::") and not name.startswith("mkldnn::"):
            continue
        if name in MATMUL:
            totals["matmul"] += self_us
            shapes = getattr(e, "input_shapes", None) or []
            if any(vocab in s for s in shapes if isinstance(s, (list, tuple))):
                head += self_us
        elif name.startswith(ATTENTION):
            totals["attention"] += self_us
        elif name in ("aten::copy_", "aten::_to_copy"):
            totals["copies and dtype casts"] += self_us
        elif name in ("aten::linalg_vector_norm", "aten::_foreach_norm"):
            totals["gradient/weight norms"] += self_us
        else:
            totals["other aten ops"] += self_us
    wall_us = wall_s * 1e6
    in_ops = sum(totals.values())
    shares = {k: v / wall_us for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    shares["lm head matmuls (part of matmul)"] = head / wall_us
    shares["outside ops (python, hooks, data)"] = max(0.0, 1 - in_ops / wall_us)
    calls = sum(1 for e in events if e.name.startswith("aten::"))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)
    return {"wall_s": wall_s, "shares": shares, "aten_calls": calls}, table


def profile_training(name: str, warmup: int, steps: int, opts: dict[str, Any]) -> tuple[dict[str, Any], str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.arms import HFArm, LightningArm

    arm = LightningArm(name, opts) if name.startswith("sftl") else HFArm(name, opts)
    vocab = arm.peft.get_base_model().config.vocab_size
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    marks: dict[str, float] = {}

    def begin(step: int) -> None:
        if step == warmup:
            prof.__enter__()
            marks["t0"] = time.perf_counter()

    def end(step: int) -> None:
        if step == warmup + steps - 1:
            marks["t1"] = time.perf_counter()
            prof.__exit__(None, None, None)

    if isinstance(arm, LightningArm):
        from lightning.pytorch.callbacks import Callback

        class Hook(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                begin(trainer.global_step)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                end(trainer.global_step - 1)

        extra = (Hook(),)
    else:
        from transformers import TrainerCallback

        class HFHook(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                begin(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                end(state.global_step - 1)

        extra = (HFHook(),)
    with tempfile.TemporaryDirectory() as tmp:
        arm.run(name, 1, 2, Path(tmp))  # priming run: compilation and one-off costs stay out of the profile
        result = arm.run(name, warmup, steps, Path(tmp), extra_callbacks=extra)
    summary, table = categorise(prof, marks["t1"] - marks["t0"], vocab)
    summary.update(
        steps=steps,
        tokens_per_s=result["tokens_per_s"],
        padding_fraction=result["padding_fraction"],
        mean_batch_width=sum(result["batch_widths"][warmup:]) / steps,
        torch_threads=torch.get_num_threads(),
    )
    return summary, table


def profile_validation(opts: dict[str, Any], batches: int, adapter: str) -> list[tuple[str, dict[str, Any], str]]:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.validation_speed import ValidationBench

    n = batches * 50
    args = argparse.Namespace(
        config=opts["config"], model=opts["model"], precision=None, accelerator="cpu",
        questions=n, val_train_size=64, adapter=adapter, set=opts.get("overrides"),
    )
    bench = ValidationBench(args)
    n = min(n, len(bench.questions))
    vocab = bench.module.model.get_base_model().config.vocab_size
    out = []
    for variant in ("sftl_generate", "hf_generate"):
        getattr(bench, variant)()  # warm-up pass (same batches)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            run = getattr(bench, variant)()
            wall = time.perf_counter() - t0
        summary, table = categorise(prof, wall, vocab)
        summary.update(questions=n, seconds=run["seconds"], decode_steps_per_batch=run["decode_steps_per_batch"])
        out.append((variant, summary, table))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.train_throughput import add_common_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="sftl,hf_dynamic", help="training arms to profile (default sftl,hf_dynamic)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--val-batches", type=int, default=2, help="validation batches of 50 to profile (0: skip)")
    p.add_argument("--adapter", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "profile")
    add_common_arguments(p)
    args = p.parse_args(argv)
    quiet()
    opts = {"config": str(args.config), "model": args.model, "train_size": args.train_size, "precision": args.precision, "accelerator": "cpu", "overrides": args.set}
    report: dict[str, Any] = {}
    text = []
    for name in [a for a in args.arms.split(",") if a]:
        summary, table = profile_training(name, args.warmup, args.steps, opts)
        report[f"train/{name}"] = summary
        text.append(f"==== training {name}: {args.steps} steps, {summary['wall_s']:.2f} s\n{table}")
        print(_shares_line(f"train/{name}", summary), flush=True)
    if args.val_batches:
        for variant, summary, table in profile_validation(opts, args.val_batches, args.adapter):
            report[f"validation/{variant}"] = summary
            text.append(f"==== validation {variant}: {summary['questions']} questions, {summary['wall_s']:.2f} s\n{table}")
            print(_shares_line(f"validation/{variant}", summary), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.txt").write_text("\n\n".join(text) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}.txt and {args.out}.json")
    return 0


def _shares_line(label: str, summary: dict[str, Any]) -> str:
    shares = ", ".join(f"{k} {v * 100:.0f}%" for k, v in summary["shares"].items())
    return f"{label:<26} {summary['wall_s']:.2f} s: {shares}"


if __name__ == "__main__":
    sys.exit(main())
