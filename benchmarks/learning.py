"""Learning per CPU-minute: the main job's recipe against its variants, each given the same budget.

    python -m benchmarks.learning [--arms worked bare ...] [--minutes 15] [--readme docs/learning.md] [-- CLI args]

Every arm is ``sft-lightning fit --config configs/embedded.yaml --budget.minutes M`` plus its
overrides, run one after the other on this machine with the same budget; what is compared is the accuracy
each reaches in that time on the generated validation (``val``), the held-out phrasings
(``val_unseen``) and the hand-written set (``handwritten``), with the steps and examples that
fit, with the calculator (``model.calculator``, on in the config) and, validated again without
it, by the model alone. Arms are chosen by ``val_unseen`` (generated, phrased differently from training); the
hand-written set is reported, never used to choose. Results go to
``benchmarks/results/learning-<machine kind>.json`` and, with ``--readme``, into docs/learning.md
between the ``learning-table`` markers of that machine kind, so tables of different CPUs sit
side by side instead of overwriting each other.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, cpu_in_words, machine_description, machine_kind, shown, write_json

# Every arm states the settings it varies explicitly, so a row keeps its meaning when the config's
# defaults move. "worked" is the config as it is (`make train`).
_R8 = ["--model.lora_r", "8", "--model.lora_alpha", "16"]
_B16 = ["--data.batch_size", "16"]
ARMS: dict[str, tuple[str, list[str]]] = {
    "r8-b16": ("worked, LoRA r 8, batch 16", [*_R8, *_B16]),
    "lr4e-3": ("worked, LoRA r 8, batch 16, learning rate 4e-3", [*_R8, *_B16, "--model.learning_rate", "0.004"]),
    "r16": ("worked, LoRA r 16, batch 16", ["--model.lora_r", "16", "--model.lora_alpha", "32", *_B16]),
    "r32": ("worked, LoRA r 32, batch 16", ["--model.lora_r", "32", "--model.lora_alpha", "64", *_B16]),
    "batch8": ("worked, LoRA r 8, batch 8", [*_R8, "--data.batch_size", "8"]),
    "r16-b8": ("worked, LoRA r 16, batch 8", ["--model.lora_r", "16", "--model.lora_alpha", "32", "--data.batch_size", "8"]),
    "worked": ("worked, LoRA r 32, batch 16 (`make train`)", []),
    "bare": ("bare `<answer>` only, LoRA r 32, batch 16", ["--data.answer_format", "bare"]),
}
SETS = ("val", "val_unseen", "handwritten")


def run_arm(name: str, config: Path, minutes: float, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    """One budgeted fit of an arm; its metrics from the run's metrics.csv and summary."""
    label, overrides = ARMS[name]
    cli = str(Path(sys.executable).parent / "sft-lightning")
    args = [
        "fit", "--config", str(config), "--budget.minutes", f"{minutes:g}", *overrides, *extra,
        "--trainer.logger.init_args.save_dir", str(out_dir), "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([cli, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"arm {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_dir = Path(re.search(r"run directory\s+(\S+)", proc.stdout).group(1))
    run_dir = run_dir if run_dir.is_absolute() else ROOT / run_dir
    result: dict[str, Any] = {"arm": name, "label": label, "command": shown("sft-lightning " + shlex.join(args)), "wall_s": wall}
    result.update(_final_metrics(run_dir / "metrics.csv"))
    result.update(model_alone(run_dir, config, [*overrides, *extra], env))
    result["summary"] = shown(proc.stdout[proc.stdout.index("==== sft-lightning fit summary"):].strip())
    steps = re.search(r"\nsteps\s+(\d+) \((\d+) examples\)", proc.stdout)
    result["steps"], result["examples"] = (int(steps.group(1)), int(steps.group(2))) if steps else (None, None)
    return result


def model_alone(run_dir: Path, config: Path, overrides: list[str], env: dict[str, str]) -> dict[str, float]:
    """The arm's adapter validated with the calculator off: what the model computes by itself."""
    cli = str(Path(sys.executable).parent / "sft-lightning")
    args = ["validate", "--config", str(config), *overrides, "--model.adapter", str(run_dir / "adapter"), "--model.calculator", "false",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run([cli, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"validating {run_dir} without the calculator failed:\n{proc.stderr[-3000:]}")
    found = re.findall(r"^(\S+)/accuracy\s+([0-9.]+)\s+answer rate ([0-9.]+)", proc.stdout, flags=re.MULTILINE)
    return {f"model_alone/{name}/accuracy": float(acc) for name, acc, _ in found}


def _final_metrics(path: Path) -> dict[str, float]:
    """The last logged value of each validation metric."""
    final: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and any(key.startswith(f"{s}/") for s in SETS):
                    final[key] = float(value)
    return final


def table(results: list[dict[str, Any]], machine: dict[str, Any], minutes: float) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_in_words(machine)}, "
        f"torch {machine['torch']}; each arm `sft-lightning fit --config configs/embedded.yaml --budget.minutes {minutes:g}` "
        "with the overrides in `benchmarks/learning.py` (`python -m benchmarks.learning`).",
        "",
        "| arm | steps | examples | val (300) | val_unseen (200) | handwritten (286) | model alone: val / val_unseen / handwritten |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cells = [f"{r.get(f'{s}/accuracy', float('nan')):.3f}" for s in SETS]
        alone = " / ".join(f"{r.get(f'model_alone/{s}/accuracy', float('nan')):.3f}" for s in SETS)
        lines.append(f"| {r['label']} | {r['steps']} | {r['examples']} | {' | '.join(cells)} | {alone} |")
    return "\n".join(lines)


def update_readme(path: Path, kind: str, text: str) -> bool:
    """Replace this machine kind's block between its markers; False if the page has none."""
    start, end = f"<!-- learning-table:{kind}:start -->", f"<!-- learning-table:{kind}:end -->"
    readme = path.read_text(encoding="utf-8")
    if start not in readme or end not in readme:
        return False
    head, rest = readme.split(start, 1)
    path.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS), help="arms to run (none: only rewrite the table)")
    p.add_argument("--minutes", type=float, default=15.0, help="the TimeBudget of every arm")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "embedded.yaml")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "learning")
    p.add_argument("--readme", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None, help="result file (default: benchmarks/results/learning-<machine kind>.json)")
    p.add_argument("--kind", default=None, help="machine kind for the file and the table block (default: measured, e.g. cpu-amx)")
    p.add_argument("extra", nargs="*", help="more CLI arguments for every arm (after --), e.g. -- --model.model tiny-random")
    args = p.parse_args(argv)
    machine, kind = machine_description(), args.kind or machine_kind()
    path = args.results or RESULTS_DIR / f"learning-{kind}.json"
    previous = json.loads(path.read_text())["arms"] if path.is_file() else []
    results = {r["arm"]: r for r in previous}
    for name in args.arms:
        print(f"arm {name}: {ARMS[name][0]} ...", flush=True)
        results[name] = run_arm(name, args.config, args.minutes, args.out_dir, args.extra)
        print(f"  {json.dumps({k: v for k, v in results[name].items() if '/' in k or k in ('steps', 'wall_s')})}", flush=True)
        write_json(path, {"machine": machine, "minutes": args.minutes, "arms": list(results.values())})
    ordered = [results[name] for name in ARMS if name in results]
    text = table(ordered, machine, args.minutes)
    print(text)
    if args.readme and not update_readme(args.readme, kind, text):
        print(f"warning: {args.readme} has no learning-table:{kind} markers; table not written there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
