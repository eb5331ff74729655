"""Training throughput, sft-lightning vs the Hugging Face Trainer + peft recipe, on the same data.

    python -m benchmarks.train_throughput [--steps 16] [--padded-steps 6] [--warmup 2] [--repeats 3]
                                          [--arms sftl,sftl_nocb,hf_pad128,hf_dynamic,hf_dynamic_bf16]

Arms (every one: the embedded model, the generated data of ``configs/embedded.yaml``, batch 16, LoRA r8/alpha16/
dropout 0 on the same modules, the same learning rate, bf16 autocast, gradient clipping at 1.0):

- ``sftl``: ``SFTModule`` + ``SFTDataModule`` + ``lightning.Trainer`` built from ``configs/embedded.yaml`` as the
  CLI builds them (``bf16-mixed``, frozen base stored in bf16, length-grouped dynamic padding, LM head only on
  answer positions, the ``GradientHealth`` callback). Checkpointing is off (no checkpoint falls in the timed steps
  of a real run either: every 100 steps); the CSV logger logs every 10 steps as in the config.
- ``sftl_nocb``: the same without ``GradientHealth``: the callback's overhead is ``sftl`` / ``sftl_nocb``, measured
  after the rounds in ``--callback-pairs`` back-to-back pairs of ``--callback-steps`` steps (``run_callback_pairs``).
- ``hf_pad128``: ``transformers.Trainer`` + ``peft.get_peft_model``, the common recipe: every example padded to
  128 tokens when it is tokenised, labels -100 on prompt and padding, ``default_data_collator``, random order.
  The recipe's precision: fp32 base weights and ``bf16=True`` (bf16 autocast).
- ``hf_dynamic``: the same, unpadded examples and ``DataCollatorForSeq2Seq`` (pad to the longest in the batch).
- ``hf_dynamic_bf16``: ``hf_dynamic`` with the base stored in bf16 like ``sftl``, to separate what the base dtype
  is worth from what batching and the loss are worth.

The token ids are the data module's own (``format_prompt`` + ``format_answer`` + EOS, tokenised once), so all arms
see exactly the same examples and token counts.

Measure: each arm lives in its own process (its peak memory is its own) and keeps the model loaded; the parent
runs one arm at a time, ``--repeats`` rounds, rotating the order every round (a b c, b c a, ...). A run is
``--warmup`` + N optimiser steps; throughput = non-padding tokens of the N timed steps / wall time from the end
of the last warm-up step to the end of the last timed step (so data loading, collation, logging and callbacks are
all inside). The paired ratio of round r is ``sftl`` tokens/s / other arm tokens/s in the same round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.arms import ARMS, DEFAULT_ARMS, REFERENCE, worker_main
from benchmarks.common import FLOP_FORMULA, machine_description, quiet, result_path, same_batch_ratio, shown, spread, write_json

TARGETS = {"hf_pad128": 3.0, "hf_dynamic": 1.15}
CALLBACK_TARGET = 0.03
BUSY_BELOW = 0.75  # CPU utilisation under which a run was probably sharing the cores with another process
BUSY_NOTE = "  <- the cores were busy with something else: this run's timing is unreliable"


class Worker:
    """A process running one or more arms (the sft-lightning variants share one)."""

    def __init__(self, ctx, names: list[str], opts: dict[str, Any]) -> None:
        self.names = names
        self.name = "+".join(names)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(names, opts, child), name=f"bench-{self.name}", daemon=True)
        self.process.start()

    def receive(self, expected: str) -> dict[str, Any]:
        while not self.conn.poll(1.0):
            if not self.process.is_alive():
                raise RuntimeError(f"benchmark worker {self.name} died (exit code {self.process.exitcode})")
        kind, payload = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"benchmark worker {self.name} failed: {payload}")
        if kind != expected:
            raise RuntimeError(f"benchmark worker {self.name}: expected {expected}, got {kind}")
        return payload

    def run(self, name: str, warmup: int, steps: int) -> dict[str, Any]:
        self.conn.send(("run", name, warmup, steps))
        return self.receive("result")

    def stop(self) -> dict[str, Any]:
        try:
            self.conn.send(("stop",))
            return self.receive("stopped")
        finally:
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()


# ------------------------------------------------------------------------------------------------ parent
def measure(args: argparse.Namespace, ceiling_flops: float | None = None, log=print) -> dict[str, Any]:
    arms = list(args.arms)
    opts = {
        "config": str(args.config),
        "model": args.model,
        "train_size": args.train_size,
        "precision": args.precision,
        "accelerator": args.accelerator,
        "threads": args.threads,
        "prime_steps": args.prime_steps,
        "overrides": args.set,
    }
    ctx = mp.get_context("spawn")
    wall0 = time.perf_counter()
    lightning_arms = [a for a in arms if a.startswith("sftl")]
    groups = ([lightning_arms] if lightning_arms else []) + [[a] for a in arms if not a.startswith("sftl")]
    workers: dict[str, Worker] = {}  # by arm name
    setup: dict[str, Any] = {}
    try:
        for group in groups:  # set-up (imports, data, model load) in parallel; nothing is timed yet
            worker = Worker(ctx, group, opts)
            workers.update({name: worker for name in group})
        for group in groups:
            setup.update(dict.fromkeys(group, workers[group[0]].receive("ready")))
        for group in groups:  # priming runs (compilation, first steps) one worker at a time
            workers[group[0]].conn.send(("prime",))
            info = setup[group[0]]
            info.update(workers[group[0]].receive("primed"))
            log(
                f"  {'+'.join(group):<16} ready: set-up {info['setup_s']:.0f} s, priming run {info['priming_s']:.0f} s"
                f" ({info['base_dtype'].replace('torch.', '')} base{', compiled' if info.get('compile') else ''})"
            )
        rounds: list[dict[str, Any]] = []
        for r in range(args.repeats):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            runs = {}
            for name in order:
                steps = args.padded_steps if name == "hf_pad128" else args.steps
                runs[name] = workers[name].run(name, args.warmup, steps)
                log(
                    f"  round {r} {name:<16} {runs[name]['tokens_per_s']:8.0f} tok/s  step {runs[name]['step_s_median'] * 1e3:7.0f} ms"
                    f"  padding {runs[name]['padding_fraction'] * 100:4.1f}%  peak {runs[name]['peak_rss_mb'] or 0:6.0f} MB"
                    f"  cpu {runs[name]['cpu_utilisation'] * 100:3.0f}%{BUSY_NOTE if runs[name]['cpu_utilisation'] < BUSY_BELOW else ''}"
                )
            rounds.append({"round": r, "order": order, "runs": runs})
        callback_pairs = run_callback_pairs(args, arms, workers, log)
        final = {}
        for group in groups:
            final.update(dict.fromkeys(group, workers[group[0]].stop()))
    finally:
        for w in workers.values():
            if w.process.is_alive():
                w.process.terminate()
    return summarise(args, arms, setup, rounds, final, ceiling_flops, time.perf_counter() - wall0, callback_pairs)


def run_callback_pairs(args: argparse.Namespace, arms: list[str], workers: dict[str, Worker], log) -> list[dict[str, Any]]:
    """Extra with/without-GradientHealth pairs for the overhead, longer than the throughput rounds.

    Why separate: a 16-step round's median step moves by several percent with machine noise (one make bench run
    gave per-round ratios of 1.001, 1.032 and 1.070), more than the 3% being tested. Each pair here runs both
    variants back to back (order alternating pair by pair) in the same worker, on the same batches.
    """
    if args.callback_pairs < 1 or REFERENCE not in arms or "sftl_nocb" not in arms:
        return []
    pairs = []
    for i in range(args.callback_pairs):
        order = [REFERENCE, "sftl_nocb"] if i % 2 == 0 else ["sftl_nocb", REFERENCE]
        runs = {name: workers[name].run(name, args.warmup, args.callback_steps) for name in order}
        ratio = runs[REFERENCE]["step_s_median"] / runs["sftl_nocb"]["step_s_median"]
        by_batch = same_batch_ratio(runs[REFERENCE]["step_s"], runs["sftl_nocb"]["step_s"])
        busy = min(run["cpu_utilisation"] for run in runs.values()) < BUSY_BELOW
        log(
            f"  callback pair {i} ({order[0]} first)  with {runs[REFERENCE]['step_s_median'] * 1e3:6.1f} ms  without"
            f" {runs['sftl_nocb']['step_s_median'] * 1e3:6.1f} ms  ratio {ratio:.4f}  same batch {by_batch:.4f}{BUSY_NOTE if busy else ''}"
        )
        pairs.append(
            {
                "pair": i,
                "order": order,
                "ratio": ratio,
                "same_batch_ratio": by_batch,
                "losses_identical": runs[REFERENCE]["losses"] == runs["sftl_nocb"]["losses"],
                "cpu_utilisation_min": min(run["cpu_utilisation"] for run in runs.values()),
                "step_s": {name: run["step_s"] for name, run in runs.items()},
            }
        )
    return pairs


def summarise(args, arms, setup, rounds, final, ceiling_flops, wall_s, callback_pairs=()) -> dict[str, Any]:
    per_arm: dict[str, Any] = {}
    for name in arms:
        runs = [rd["runs"][name] for rd in rounds]
        tps = [run["tokens_per_s"] for run in runs]
        fps = statistics.median(run["useful_flops_per_s"] for run in runs)
        per_arm[name] = {
            "description": ARMS[name],
            **{k: v for k, v in setup[name].items() if k != "setup_peak_rss_mb"},
            "tokens_per_s": spread(tps),
            "step_s_median": statistics.median(run["step_s_median"] for run in runs),
            "padding_fraction": statistics.median(run["padding_fraction"] for run in runs),
            "mean_batch_width": statistics.fmean(w for run in runs for w in run["batch_widths"]),
            "useful_flops_per_s_median": fps,
            "fraction_of_matmul_peak": fps / ceiling_flops if ceiling_flops else None,
            "peak_rss_training_mb": max(run["peak_rss_mb"] or 0 for run in runs) or None,
            "peak_rss_process_mb": final[name]["process_peak_rss_mb"],
            "peak_gpu_mb": max((run.get("peak_gpu_mb") or 0 for run in runs), default=0) or None,
            "cpu_utilisation_min": min(run["cpu_utilisation"] for run in runs),
        }
    ratios: dict[str, Any] = {}
    if REFERENCE in arms:
        for name in arms:
            if name == REFERENCE or name == "sftl_nocb":
                continue
            paired = [rd["runs"][REFERENCE]["tokens_per_s"] / rd["runs"][name]["tokens_per_s"] for rd in rounds]
            ratios[f"{REFERENCE}/{name}"] = {
                **spread(paired),
                "per_round": paired,
                "target": TARGETS.get(name),
                "meets_target": statistics.median(paired) >= TARGETS[name] if name in TARGETS else None,
            }
    callback = None
    if REFERENCE in arms and "sftl_nocb" in arms:
        # Step span (on_train_batch_start -> on_train_batch_end), as benchmarks/callback_overhead.py measures it.
        # From the dedicated pairs when there are any (see run_callback_pairs), else from the throughput rounds.
        in_rounds = [rd["runs"][REFERENCE]["step_s_median"] / rd["runs"]["sftl_nocb"]["step_s_median"] for rd in rounds]
        if callback_pairs:
            source = f"{len(callback_pairs)} dedicated pairs of {args.callback_steps} timed steps"
            paired = [pair["ratio"] for pair in callback_pairs]
            same_batch = [pair["same_batch_ratio"] for pair in callback_pairs]
            identical = [pair["losses_identical"] for pair in callback_pairs]
        else:
            source = f"the {len(rounds)} throughput rounds of {args.steps} timed steps"
            paired = in_rounds
            # both arms train on the same batches in the same order (identical losses show it): step j vs step j
            same_batch = [same_batch_ratio(rd["runs"][REFERENCE]["step_s"], rd["runs"]["sftl_nocb"]["step_s"]) for rd in rounds]
            identical = [rd["runs"][REFERENCE]["losses"] == rd["runs"]["sftl_nocb"]["losses"] for rd in rounds]
        callback = {
            "measured_over": source,
            "step_time_ratio": {**spread(paired), "per_pair": paired},
            "same_batch_step_ratio": {**spread(same_batch), "per_pair": same_batch},
            "median_overhead_pct": (statistics.median(paired) - 1) * 100,
            "target_pct": CALLBACK_TARGET * 100,
            "meets_target": statistics.median(paired) - 1 < CALLBACK_TARGET,
            "losses_identical_every_pair": all(identical),
            "step_time_ratio_in_throughput_rounds": {**spread(in_rounds), "per_round": in_rounds},
            "pairs": list(callback_pairs),
        }
    return {
        "benchmark": "training throughput (non-padding tokens/s), paired rounds",
        "config": {
            "config_file": shown(args.config),
            "model": args.model or "from config",
            "overrides": args.set,
            "steps": args.steps,
            "padded_steps": args.padded_steps,
            "warmup_steps": args.warmup,
            "repeats": args.repeats,
            "callback_pairs": args.callback_pairs,
            "callback_steps": args.callback_steps,
            "train_size": args.train_size or "from config",
            "arms": {name: ARMS[name] for name in arms},
            "flop_formula": FLOP_FORMULA,
            "matmul_peak_flops": ceiling_flops,
        },
        "arms": per_arm,
        "ratios": ratios,
        "callback_overhead": callback,
        "busy_runs": [
            f"round {rd['round']} {name}" for rd in rounds for name, run in rd["runs"].items() if run["cpu_utilisation"] < BUSY_BELOW
        ],
        "rounds": rounds,
        "wall_s": wall_s,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=16, help="timed optimiser steps per run (default 16)")
    p.add_argument("--padded-steps", type=int, default=6, help="timed steps of hf_pad128 runs, whose batches all have one shape (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the timed ones in every run, >= 1 (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of all arms, order rotated each round (default 3)")
    p.add_argument("--arms", type=lambda s: [a for a in s.split(",") if a], default=DEFAULT_ARMS, help="comma-separated; choices: " + ",".join(ARMS))
    p.add_argument("--train-size", type=int, default=None, help="generated training questions (default: the config's)")
    p.add_argument("--prime-steps", type=int, default=2, help="steps of the discarded priming run each arm makes at set-up (default 2)")
    p.add_argument("--callback-pairs", type=int, default=6, help="extra with/without-GradientHealth pairs for its overhead, 0: use the rounds (default 6)")
    p.add_argument("--callback-steps", type=int, default=30, help="timed steps per run of those pairs (default 30)")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks.common import EMBEDDED_CONFIG

    p.add_argument("--config", type=Path, default=EMBEDDED_CONFIG, help="the CLI config whose settings every arm uses")
    p.add_argument("--model", default=None, help="override model.model (e.g. tiny-random for a smoke run)")
    p.add_argument("--precision", default=None, help="override trainer.precision (e.g. 16-mixed on a GPU)")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a setting of the config for every arm, e.g. --set model.compile=false (repeatable)",
    )  # fmt: skip


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if args.steps < 1 or args.padded_steps < 1 or args.warmup < 1 or args.repeats < 1 or args.callback_steps < 1:
        p.error("--steps, --padded-steps, --warmup, --repeats and --callback-steps must be >= 1")
    if args.callback_pairs < 0:
        p.error("--callback-pairs must be >= 0")


def print_table(result: dict[str, Any], log=print) -> None:
    log(f"{'arm':<16} {'tok/s median':>12} {'(min-max)':>15} {'step ms':>8} {'padding':>8} {'MFLOP/s':>9} {'peak MB':>8}")
    for name, arm in result["arms"].items():
        t = arm["tokens_per_s"]
        log(
            f"{name:<16} {t['median']:>12.0f} {t['min']:>7.0f}-{t['max']:<7.0f} {arm['step_s_median'] * 1e3:>8.0f}"
            f" {arm['padding_fraction'] * 100:>7.1f}% {arm['useful_flops_per_s_median'] / 1e9:>8.1f}G {arm['peak_rss_training_mb'] or 0:>8.0f}"
        )
    for key, r in result["ratios"].items():
        target = f"  target >= {r['target']}: {'PASS' if r['meets_target'] else 'FAIL'}" if r["target"] else ""
        log(f"{key:<28} min {r['min']:.2f}  median {r['median']:.2f}  max {r['max']:.2f}{target}")
    cb = result.get("callback_overhead")
    if cb:
        s = cb["step_time_ratio"]
        log(
            f"GradientHealth step-time ratio min {s['min']:.3f} median {s['median']:.3f} max {s['max']:.3f} -> {cb['median_overhead_pct']:+.1f}%"
            f" (target < 3%: {'PASS' if cb['meets_target'] else 'FAIL'}) over {cb['measured_over']}; losses identical: {cb['losses_identical_every_pair']}"
        )
        b = cb["same_batch_step_ratio"]
        log(f"  same batch, step by step: ratio min {b['min']:.3f} median {b['median']:.3f} max {b['max']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    add_common_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/train_throughput-<machine kind>.json)")
    args = p.parse_args(argv)
    check_arguments(p, args)
    quiet()
    result = measure(args)
    result["machine"] = machine_description(args.accelerator)
    args.out = args.out or result_path("train_throughput", getattr(args, "accelerator", "cpu"))
    write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
