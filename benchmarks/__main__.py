"""``make bench``: every measurement of issue 6 in one run, results in ``benchmarks/results/``.

    python -m benchmarks [--steps 16] [--padded-steps 6] [--warmup 2] [--repeats 3] [--callback-pairs 6]
                         [--questions 1000] [--val-repeats 1] [--adapter auto] [--readme docs/performance.md]

Every file is named for the machine kind it ran on (``benchmarks.common.machine_kind``: ``cpu-amx``,
``cpu-avx512bf16``, ``cpu-avx2``, ``cpu``, ``cuda``), and so is the table block in docs/performance.md, so runs on different machines never overwrite
each other:

1. ``hardware-<kind>.json``: the bf16 (and fp32) matmul FLOP/s ceiling of this machine;
2. ``train_throughput-<kind>.json``: non-padding tokens/s of sft-lightning vs the HF Trainer + peft recipe (padded to
   128, dynamic padding, dynamic with a bf16 base), paired rounds; the GradientHealth overhead (an arm without
   it, then ``--callback-pairs`` longer with/without pairs); peak memory of each arm's training runs; useful model FLOP/s as a share of the ceiling;
3. ``validation_speed-<kind>.json``: seconds to generate and score 1000 questions vs a plain ``model.generate`` loop;
4. ``callback_overhead_ddp-<kind>.json``: the GradientHealth overhead under DDP, 2 processes on gloo, ``--ddp-pairs``
   with/without pairs (``python -m benchmarks.callback_overhead --devices 2`` in a process of its own);
5. ``summary-<kind>.json`` + ``summary-<kind>.md``: the table (printed, and written into docs/performance.md between the
   ``bench-table:<kind>`` markers with ``--readme``; a kind without a block gets one after the last block).

The standalone, more detailed callback benchmark stays available as ``python -m benchmarks.callback_overhead``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import hardware, train_throughput, validation_speed
from benchmarks.common import RESULTS_DIR, cpu_in_words, machine_description, machine_kind, quiet, write_json

BLOCK = re.compile(r"<!-- bench-table:(?P<kind>[\w.-]+):start -->.*?<!-- bench-table:(?P=kind):end -->", re.S)


def markers(kind: str) -> tuple[str, str]:
    return f"<!-- bench-table:{kind}:start -->", f"<!-- bench-table:{kind}:end -->"

LABELS = {
    "sftl": "sft-lightning (`make train` settings)",
    "sftl_nocb": "sft-lightning without GradientHealth",
    "hf_pad128": "HF Trainer + peft, padded to 128",
    "hf_dynamic": "HF Trainer + peft, dynamic padding",
    "hf_dynamic_bf16": "HF Trainer + peft, dynamic padding, bf16 base",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    train_throughput.add_arguments(p)
    validation_speed.add_arguments(p)
    train_throughput.add_common_arguments(p)
    p.add_argument("--matmul-size", type=int, default=4096, help="square matmul size for the FLOP/s ceiling (default 4096)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: hardware,train,validation,ddp")
    p.add_argument("--ddp-pairs", type=int, default=3, help="with/without GradientHealth pairs under 2-process DDP (default 3)")
    p.add_argument("--ddp-steps", type=int, default=10, help="timed steps per run of those pairs (default 10)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory for the JSON files (default benchmarks/results)")
    p.add_argument("--readme", type=Path, default=None, help="write the table into this file between the bench-table markers")
    args = p.parse_args(argv)
    train_throughput.check_arguments(p, args)
    if args.questions < 1 or args.val_repeats < 1 or args.ddp_pairs < 1 or args.ddp_steps < 1:
        p.error("--questions, --val-repeats, --ddp-pairs and --ddp-steps must be >= 1")
    args.skip = {s for s in args.skip.split(",") if s}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    wall0 = time.perf_counter()
    machine = machine_description(args.accelerator)
    kind = machine_kind(args.accelerator)
    print(f"machine: {machine['cpu_model']} ({', '.join(machine['cpu_flags'])}), {machine['cpu_count']} cores,"
          f" torch {machine['torch']} ({machine['torch_threads']} threads), load average {machine['load_average_at_start']}", flush=True)
    results: dict[str, Any] = {}
    ceiling = None
    if "hardware" not in args.skip:
        print("[1/4] matmul ceiling", flush=True)
        results["hardware"] = hardware.measure(args.matmul_size, 5, args.accelerator)
        results["hardware"]["machine"] = machine
        write_json(args.results / f"hardware-{kind}.json", results["hardware"])
        ceiling = results["hardware"]["peak_flops"]
    if "train" not in args.skip:
        print(f"[2/4] training throughput: {len(args.arms)} arms x {args.repeats} rounds", flush=True)
        results["train"] = train_throughput.measure(args, ceiling)
        results["train"]["machine"] = machine
        write_json(args.results / f"train_throughput-{kind}.json", results["train"])
    if "validation" not in args.skip:
        print(f"[3/4] validation speed: {args.questions} questions x {len(validation_speed.VARIANTS)} variants x {args.val_repeats} rounds", flush=True)
        results["validation"] = validation_speed.measure(args)
        results["validation"]["machine"] = machine
        write_json(args.results / f"validation_speed-{kind}.json", results["validation"])
    if "ddp" not in args.skip and args.accelerator == "cpu":
        print(f"[4/4] GradientHealth overhead under DDP: 2 processes, {args.ddp_pairs} pairs x {args.ddp_steps} steps", flush=True)
        results["ddp"] = ddp_overhead(args, args.results / f"callback_overhead_ddp-{kind}.json")
    wall = time.perf_counter() - wall0
    table = markdown_table(results, machine, wall, args)
    summary = {"machine": machine, "machine_kind": kind, "wall_s": wall, "command": _command(args), "table_markdown": table, **_headline(results)}
    write_json(args.results / f"summary-{kind}.json", summary)
    (args.results / f"summary-{kind}.md").write_text(table + "\n")
    print()
    if "train" in results:
        train_throughput.print_table(results["train"])
    if "validation" in results:
        validation_speed.print_table(results["validation"])
    print()
    print(table)
    if args.readme:
        print(f"table for {kind} updated: {args.readme}" if update_readme(args.readme, table, kind) else
              f"warning: {args.readme} has no bench-table block; table not written there")
    print(f"wall {wall / 60:.1f} min; results in {args.results}/")
    return 0


def ddp_overhead(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The DDP pairs in a process of their own: Lightning's launcher starts rank 1 by re-running the command."""
    command = [
        sys.executable, "-m", "benchmarks.callback_overhead", "--devices", "2", "--pairs", str(args.ddp_pairs),
        "--steps", str(args.ddp_steps), "--warmup", str(args.warmup), "--out", str(out),
        *(["--model", args.model] if args.model else []), *(["--precision", args.precision] if args.precision else []),
        *(["--max-length", "256"] if args.model == "tiny-random" else []),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def _command(args: argparse.Namespace) -> str:
    return "python -m benchmarks " + " ".join(sys.argv[1:])


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "train" in results:
        t = results["train"]
        out["ratios"] = {k: {x: v[x] for x in ("min", "median", "max", "target", "meets_target")} for k, v in t["ratios"].items()}
        out["callback_overhead"] = t["callback_overhead"]
        out["tokens_per_s_median"] = {k: v["tokens_per_s"]["median"] for k, v in t["arms"].items()}
        out["peak_rss_training_mb"] = {k: v["peak_rss_training_mb"] for k, v in t["arms"].items()}
    if "ddp" in results:
        out["callback_overhead_ddp"] = results["ddp"]["summary"]
    if "validation" in results:
        v = results["validation"]
        out["validation_seconds_median"] = {k: s["median"] for k, s in v["seconds"].items()}
        out["validation_meets_target"] = v["meets_target"]
    if "hardware" in results:
        out["peak_flops"] = results["hardware"]["peak_flops"]
    return out


def _pass(ok: bool | None) -> str:
    return "" if ok is None else ("**pass**" if ok else "**FAIL**")


def markdown_table(results: dict[str, Any], machine: dict[str, Any], wall: float, args: argparse.Namespace) -> str:
    lines = [
        f"Measured {dt.date.today().isoformat()} on {cpu_in_words(machine)}, torch {machine['torch']} with {machine['torch_threads']}"
        f" threads, transformers {machine['transformers']}, peft {machine['peft']}, lightning {machine['lightning']};"
        f" `{_command(args)}`, {wall / 60:.1f} min wall.",
        "",
    ]
    hw = results.get("hardware")
    if "train" in results:
        t = results["train"]
        c = t["config"]
        lines += [
            f"Training, model `{_model_name(args)}`, the data, batch size, LoRA and precision of `{_rel(args.config)}`:"
            f" median of {c['repeats']} rounds, each arm {c['warmup_steps']} warm-up + {c['steps']} timed steps"
            f" ({c['padded_steps']} for the padded arm); tokens = non-padding tokens.",
            "",
            f"| arm | base | tokens/s | step | padding | peak RSS | useful FLOP/s | of {(hw or {}).get('peak_dtype', 'bf16')} peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, arm in t["arms"].items():
            frac = arm["fraction_of_matmul_peak"]
            lines.append(
                f"| {LABELS.get(name, name)} | {arm['base_dtype'].replace('torch.', '')} | {arm['tokens_per_s']['median']:.0f}"
                f" | {arm['step_s_median'] * 1e3:.0f} ms | {arm['padding_fraction'] * 100:.0f}% | {(arm['peak_rss_training_mb'] or 0) / 1024:.2f} GB"
                f" | {arm['useful_flops_per_s_median'] / 1e9:.0f} G | {'' if frac is None else f'{frac * 100:.1f}%'} |"
            )
        lines += ["", "| paired ratio | min | median | max | target |", "|---|---:|---:|---:|---|"]
        for key, r in t["ratios"].items():
            other = key.split("/", 1)[1]
            target = f">= {r['target']} {_pass(r['meets_target'])}" if r["target"] else ""
            lines.append(f"| tokens/s, sft-lightning / {LABELS.get(other, other)} | {r['min']:.2f} | {r['median']:.2f} | {r['max']:.2f} | {target} |")
        cb = t.get("callback_overhead")
        if cb:
            s = cb["step_time_ratio"]
            b, r = cb["same_batch_step_ratio"], cb["step_time_ratio_in_throughput_rounds"]
            lines += [
                f"| step time, with / without GradientHealth ({cb['measured_over']}) | {s['min']:.3f} | {s['median']:.3f}"
                f" | {s['max']:.3f} | < 1.03 {_pass(cb['meets_target'])} |",
                f"| the same pairs, step j / step j (the same batch) | {b['min']:.3f} | {b['median']:.3f} | {b['max']:.3f} | |",
                f"| the same ratio in the throughput rounds above ({len(r['per_round'])} x {t['config']['steps']} steps)"
                f" | {r['min']:.3f} | {r['median']:.3f} | {r['max']:.3f} | |",
            ]
    if "ddp" in results:
        d, c = results["ddp"]["summary"], results["ddp"]["config"]
        if "train" not in results:
            lines += ["| paired ratio | min | median | max | target |", "|---|---:|---:|---:|---|"]
        lines.append(
            f"| step time under DDP ({c['devices']} processes, gloo), with / without GradientHealth ({c['pairs']} pairs x"
            f" {c['steps']} steps) | {d['ratio_min']:.3f} | {d['ratio_median']:.3f} | {d['ratio_max']:.3f}"
            f" | < 1.03 {_pass(d['meets_target'])} |"
        )
    if "validation" in results:
        v = results["validation"]
        c = v["config"]
        lines += [
            "",
            f"Validation, {c['questions']} questions, batch {c['eval_batch_size']}, max_new_tokens {c['max_new_tokens']},"
            f" adapter: {c['adapter']}; median (min-max) of {c['repeats']} rounds.",
            "",
            "| variant | seconds | accuracy | answer rate |",
            "|---|---:|---:|---:|",
        ]
        names = {
            "sftl_validate": "sft-lightning `Trainer.validate` (loss + generate + score)",
            "sftl_generate": "sft-lightning generate + score (`greedy_generate`)",
            "hf_generate": "plain `model.generate` loop + score",
            "sftl_generate_unmerged": "the same with the LoRA branches unmerged (`--model.merge_lora_for_generation false`)",
        }
        for name, s in v["seconds"].items():
            run = v["rounds"][-1]["runs"][name]
            lines.append(f"| {names[name]} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | {run['accuracy']:.3f} | {run['answer_rate']:.3f} |")
        r = v["ratio_sftl_generate_over_hf"]
        lines.append(
            f"\nGenerate + score, sft-lightning / plain loop: {r['median']:.2f} (min {r['min']:.2f}, max {r['max']:.2f});"
            f" target {v['target']}: {_pass(v['meets_target'])}. Predictions identical on"
            f" {v['prediction_agreement'] * 100:.0f}% of the questions (the plain loop runs without the calculator, so it keeps the model's own arithmetic; and 16-bit batches padded differently round differently)."
        )
        if "sftl_generate_unmerged" in v["seconds"]:
            u, g = v["seconds"]["sftl_generate_unmerged"]["median"], v["seconds"]["sftl_generate"]["median"]
            lines.append(
                f"LoRA folded into the weights while generating (`sft_lightning/models/merged_lora.py`, the default): {g:.1f} s against"
                f" {u:.1f} s unmerged, {u / g:.2f}x; predictions identical on {v['prediction_agreement_merged_vs_unmerged'] * 100:.0f}%"
                " (merged weights round differently)."
            )
    if hw:
        m = hw["matmuls"]
        key = hw.get("peak_dtype", "bf16")
        lines.append(
            f"\nHardware ceiling: {key} {'x'.join(map(str, m[f'{key}_square']['shape'][:2]))} matmul"
            f" {m[f'{key}_square']['flops_per_s_best'] / 1e9:.0f} GFLOP/s ({_other_dtype(m, key)});"
            f" a model-shaped {'x'.join(map(str, m[f'{key}_model_shaped']['shape']))} {key} matmul reaches"
            f" {m[f'{key}_model_shaped']['flops_per_s_best'] / 1e9:.0f} GFLOP/s ({hw['model_shaped_fraction_of_peak'] * 100:.0f}% of it)."
        )
    lines += _busy_warning(results)
    return "\n".join(lines)


def _other_dtype(matmuls: dict[str, Any], key: str) -> str:
    """The reference figure beside the ceiling: fp32 where the ceiling is 16-bit, emulated bf16 where it is fp32."""
    if key == "fp32" and "bf16_square_512" in matmuls:
        return f"bf16, not native here: {matmuls['bf16_square_512']['flops_per_s_best'] / 1e9:.1f} at 512x512"
    return f"fp32: {matmuls['fp32_square']['flops_per_s_best'] / 1e9:.0f}"


def _busy_warning(results: dict[str, Any]) -> list[str]:
    busy = [*results.get("train", {}).get("busy_runs", []), *results.get("validation", {}).get("busy_runs", [])]
    if not busy:
        return []
    return ["", f"**Warning: {len(busy)} runs had the cores shared with other processes (CPU utilisation < 75%):"
            f" {', '.join(busy[:6])}{' ...' if len(busy) > 6 else ''}. Re-run on a quiet machine.**"]


def _model_name(args: argparse.Namespace) -> str:
    from benchmarks.common import embedded_settings

    return args.model or embedded_settings(args.config)["model"].get("model", "embedded")


def _rel(path: Path) -> str:
    from benchmarks.common import ROOT

    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def update_readme(path: Path, table: str, kind: str) -> bool:
    """Replace this machine kind's block; without one, add it after the last block of another kind. False when
    the page has no bench-table block at all."""
    text = path.read_text()
    start, end = markers(kind)
    block = f"{start}\n{table}\n{end}"
    blocks = list(BLOCK.finditer(text))
    mine = [m for m in blocks if m.group("kind") == kind]
    if mine:
        text = text[: mine[0].start()] + block + text[mine[0].end() :]
    elif blocks:
        text = text[: blocks[-1].end()] + "\n\n" + block + text[blocks[-1].end() :]
    else:
        return False
    path.write_text(text)
    return True


if __name__ == "__main__":
    sys.exit(main())
