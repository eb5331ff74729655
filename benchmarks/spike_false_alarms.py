"""False alarms of GradientHealth's spike rule on healthy runs: alarms / judged steps, per series and threshold;
and how often it catches a spike injected into those runs, against the plain median/MAD-of-values rule.

    python -m benchmarks.spike_false_alarms [CSV ...] [--thresholds 4 5 6 7 8] [--plain-steps 300]

Each CSV is a Lightning ``metrics.csv`` (default: ``runs/*/version_*/metrics.csv`` and the per-step series kept in
``benchmarks/results/spike_series/``); its ``train/loss`` and ``grad_health/grad_norm`` columns are read in step
order, one value per logged step (runs that log every 10 steps give a series of every 10th loss and of the
interval maxima of the norm: a coarser, noisier series than the callback sees). ``--plain-steps`` also trains the
plain Lightning model of the tests (``tests/gradient_health/_plain.py``, MSE regression, AdamW, warm-up schedule)
on CPU and judges its per-step series. The rule is :func:`callbacks.gradient_health.spikes.false_alarms`, the same
``judge`` the callback runs, with its default window and minimum history. No timing: the numbers are counts.

Detection: for each series of at least 60 values, 20 random steps (seeded) each get one value multiplied by 3, 10
or 30, one at a time; a hit is an alarm at exactly that step. The same is done for a baseline rule, the median and
MAD of the log values over the whole window (what one would write first), to show what the differences buy.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from callbacks.gradient_health.spikes import MAD_TO_SIGMA, MIN_HISTORY, SIGMA_FLOOR, WINDOW, false_alarms, robust_level

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = {"loss": "train/loss", "grad_norm": "grad_health/grad_norm"}
SERIES_DIR = ROOT / "benchmarks" / "results" / "spike_series"


def read_series(path: str) -> dict[str, list[float]]:
    """One value per logged step for each column (the last row of a step wins)."""
    by_step: dict[str, dict[int, float]] = {name: {} for name in COLUMNS}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for name, column in COLUMNS.items():
                if row.get(column) and row.get("step"):
                    by_step[name][int(row["step"])] = float(row[column])
    return {name: [values[s] for s in sorted(values)] for name, values in by_step.items()}


def plain_series(steps: int) -> dict[str, list[float]]:
    """Per-step loss and pre-clip gradient norm of the tests' plain model, trained healthy for ``steps`` steps."""
    import lightning as L
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from gradient_health._plain import Plain, regression_loader

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Plain()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0,
    )
    trainer.fit(model, regression_loader(steps))
    return {"loss": [model.losses[s] for s in sorted(model.losses)], "grad_norm": [model.grad_norms[s] for s in sorted(model.grad_norms)]}


def window_median_mad(logs: Sequence[float]) -> tuple[float, float]:
    """The baseline: median and 1.4826 * MAD of the log values themselves, over the whole window."""
    median = statistics.median(logs)
    return median, max(MAD_TO_SIGMA * statistics.median(abs(v - median) for v in logs), SIGMA_FLOOR)


Rule = Callable[[Sequence[float]], tuple[float, float]]


def caught(series: Sequence[float], rule: Rule, threshold: float, at: int, factor: float) -> bool:
    """Whether ``rule`` raises an alarm at step ``at`` once that value is multiplied by ``factor``."""
    logs: deque[float] = deque(maxlen=WINDOW)
    for t, value in enumerate(series):
        if not (math.isfinite(value) and value > 0):
            continue
        value = value * factor if t == at else value
        if len(logs) >= MIN_HISTORY:
            level, sigma = rule(list(logs))
            if math.log(value) - level > threshold * sigma:
                if t == at:
                    return True
                continue
        if t == at:
            return False
        logs.append(math.log(value))
    return False


def detection(series: list[list[float]], rule: Rule, threshold: float, factor: float) -> tuple[int, int]:
    rng = random.Random(0)
    hits = total = 0
    for values in series:
        if len(values) < 60:
            continue
        for _ in range(20):
            total += 1
            hits += caught(values, rule, threshold, rng.randrange(MIN_HISTORY + 5, len(values)), factor)
    return hits, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="*")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[4.0, 5.0, 6.0, 7.0, 8.0])
    parser.add_argument("--plain-steps", type=int, default=300, help="0: do not train the plain model")
    args = parser.parse_args(argv)
    paths = args.csv or sorted(glob.glob(str(ROOT / "runs/*/version_*/metrics.csv"))) + sorted(
        glob.glob(str(SERIES_DIR / "*.csv"))
    )
    series = {str(Path(p).relative_to(ROOT) if Path(p).is_relative_to(ROOT) else p): read_series(p) for p in paths}
    if args.plain_steps:
        series[f"plain model ({args.plain_steps} steps, tests/gradient_health/_plain.py)"] = plain_series(args.plain_steps)
    print(f"window {WINDOW}, min history {MIN_HISTORY}; alarms / judged steps; largest z: the largest deviation seen, in robust sigmas")
    header = "| series | metric | values | largest z | " + " | ".join(f"k={k:g}" for k in args.thresholds) + " |"
    print(header)
    print("|" + "---|" * (4 + len(args.thresholds)))
    totals = {k: [0, 0] for k in args.thresholds}
    for name, metrics in series.items():
        for metric, values in metrics.items():
            cells = []
            largest = false_alarms(values, threshold=max(args.thresholds))[2]
            for k in args.thresholds:
                alarms, judged, _ = false_alarms(values, threshold=k)
                totals[k][0] += alarms
                totals[k][1] += judged
                cells.append(f"{alarms}/{judged}")
            print(f"| {name} | {metric} | {len(values)} | {largest:.2f} | " + " | ".join(cells) + " |")
    print("| all | both | | | " + " | ".join(f"{a}/{j}" for a, j in totals.values()) + " |")
    every = [values for metrics in series.values() for values in metrics.values()]
    print("\ninjected spikes caught at exactly their step (hits / tries)")
    print("| rule | threshold | false alarms | x3 | x10 | x30 |")
    print("|---|---|---|---|---|---|")
    for name, rule in (("this rule (level: median of 16, noise: MAD of differences)", robust_level),
                       ("baseline (median and MAD of the values over the window)", window_median_mad)):
        for k in args.thresholds:
            alarms = sum(_alarms(values, rule, k) for values in every)
            cells = [detection(every, rule, k, factor) for factor in (3.0, 10.0, 30.0)]
            print(f"| {name} | {k:g} | {alarms} | " + " | ".join(f"{h}/{n}" for h, n in cells) + " |")


def _alarms(values: Sequence[float], rule: Rule, threshold: float) -> int:
    logs: deque[float] = deque(maxlen=WINDOW)
    alarms = 0
    for value in values:
        if not (math.isfinite(value) and value > 0):
            continue
        if len(logs) >= MIN_HISTORY:
            level, sigma = rule(list(logs))
            if math.log(value) - level > threshold * sigma:
                alarms += 1
                continue
        logs.append(math.log(value))
    return alarms


if __name__ == "__main__":
    main()
