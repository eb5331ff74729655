"""``sft-lightning report RUN_DIR``: one PNG and one screen of text about a finished (or running) run.

Four panels against the step (loss, gradient norm and clip, learning rate, validation), GradientHealth's trips marked on each.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and no GUI backend is ever imported

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from callbacks import KEY_GRAD_NORM, KEY_ROLLED_BACK, KEY_SKIPPED  # noqa: E402
from sft_lightning.atomic import atomic_file  # noqa: E402
from sft_lightning.cli.run_files import (  # noqa: E402
    Mark,
    RunDirError,
    clip_threshold,
    read_marks,
    read_metrics,
    read_run_config,
    require_run_dir,
    wall_time_s,
)

PANEL_TITLES = ("Loss", "Gradient norm (pre-clip)", "Learning rate", "Validation accuracy / answer rate")
REPORT_FILE = "report.png"
_MARK_STYLE = {"skip": ("tab:red", "skipped step"), "rollback": ("tab:purple", "rolled-back step"), "abort": ("black", "aborted")}

Series = list[tuple[int, float]]


@dataclass(frozen=True)
class RunData:
    """Everything the report shows, read once from the run directory."""

    run_dir: Path
    metrics: dict[str, Series]
    clip: float | None
    marks: list[Mark]
    wall_time_s: float | None


def load_run(run_dir: str | Path) -> RunData:
    """Read metrics, clip threshold, gradient-health marks and wall time; clear errors if missing."""
    path = require_run_dir(run_dir)
    metrics = read_metrics(path)
    return RunData(path, metrics, clip_threshold(read_run_config(path)), read_marks(path, metrics), wall_time_s(path))


def build_figure(run: RunData) -> Figure:
    """The four-panel figure (returned, not shown, so callers can save or inspect it)."""
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).flatten()
    figure.suptitle(f"sft-lightning run {run.run_dir}", fontsize=11)
    loss, grad, lr, val = axes
    m = run.metrics

    _plot(loss, m.get("train/loss"), "train/loss", "-")
    _plot(loss, m.get("val/loss"), "val/loss", "o-")
    loss.set_ylabel("cross-entropy per answer token")

    _plot(grad, m.get(KEY_GRAD_NORM), "grad norm (max per log interval)", "-")
    if run.clip is not None:
        grad.axhline(run.clip, color="tab:orange", linestyle="--", linewidth=1.2, label=f"clip threshold {run.clip:g}")
    if _positive(m.get(KEY_GRAD_NORM)):
        grad.set_yscale("log")  # a spike of 1e3 and the usual 0.5 stay readable together
        grad.yaxis.set_major_formatter(_LOG_LABELS)
        grad.yaxis.set_minor_formatter(_LOG_LABELS)
    grad.set_ylabel("L2 norm")

    _plot(lr, m.get("lr"), "lr", "-")
    lr.set_ylabel("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    _plot(val, m.get("val/accuracy"), "val/accuracy", "o-")
    _plot(val, m.get("val/answer_rate"), "val/answer_rate", "s--")
    val.set_ylim(-0.03, 1.03)
    val.set_ylabel("share of validation questions")

    for ax, title in zip(axes, PANEL_TITLES):
        ax.set_title(title, fontsize=10)
        if not ax.get_lines():
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
        _draw_marks(ax, run.marks)
        if ax.get_lines():
            ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("optimizer step")
    return figure


def summary_lines(run: RunData, png: Path | None = None) -> list[str]:
    """The one-screen text: best accuracy, final loss, gradient health, time, throughput."""
    m = run.metrics
    lines = [f"==== sft-lightning report: {run.run_dir} ===="]
    steps = [step for series in m.values() for step, _ in series]
    lines.append(f"{'steps':<18} {max(steps)}")
    if acc := m.get("val/accuracy"):
        best_step, best = max(acc, key=lambda item: (item[1], -item[0]))
        rate = dict(m.get("val/answer_rate", [])).get(best_step)
        extra = f", answer rate {rate:.4f}" if rate is not None else ""
        lines.append(f"{'best val/accuracy':<18} {best:.4f} at step {best_step}{extra} ({len(acc)} validations)")
        final_step, final = acc[-1]
        lines.append(f"{'final val/accuracy':<18} {final:.4f} at step {final_step}")
    for key in ("train/loss", "val/loss"):
        if series := m.get(key):
            lines.append(f"{'final ' + key:<18} {series[-1][1]:.4f} at step {series[-1][0]}")
    if norms := [v for _, v in m.get(KEY_GRAD_NORM, []) if math.isfinite(v)]:
        above = ""
        if run.clip is not None:
            share = sum(v > run.clip for v in norms) / len(norms)
            above = f"; clip {run.clip:g}, above it in {share:.0%} of logged intervals"
        lines.append(f"{'grad norm':<18} max {max(norms):.3g}, median {sorted(norms)[len(norms) // 2]:.3g}{above}")
    # Totals: the callback's own counters where logged (a mark from them can stand for several steps).
    counts = {action: sum(mark.action == action for mark in run.marks) for action in _MARK_STYLE}
    for action, key in (("skip", KEY_SKIPPED), ("rollback", KEY_ROLLED_BACK)):
        if counter := m.get(key):
            counts[action] = max(counts[action], int(max(v for _, v in counter)))
    lines.append(f"{'grad health':<18} {counts['skip']} skipped, {counts['rollback']} rolled back, {counts['abort']} aborted")
    for mark in run.marks:
        lines.append(f"{'':<18} step {mark.step}: {mark.action}" + (f" ({mark.diagnosis})" if mark.diagnosis else ""))
    lines.append(f"{'wall time':<18} {_duration(run.wall_time_s)}")
    if rates := [v for _, v in m.get("train/tokens_per_s", []) if math.isfinite(v)]:
        lines.append(f"{'tokens/s':<18} {sum(rates) / len(rates):.0f} mean over {len(rates)} logged intervals")
    else:
        lines.append(f"{'tokens/s':<18} not logged by this run")
    if png is not None:
        lines.append(f"{'plot':<18} {png}")
    return lines


def write_report(run_dir: str | Path, output: str | Path | None = None) -> tuple[Path, Figure, list[str]]:
    """Build the figure, save it as PNG (default ``RUN_DIR/report.png``) and return all three parts."""
    run = load_run(run_dir)
    png = Path(output) if output is not None else run.run_dir / REPORT_FILE
    figure = build_figure(run)
    try:
        with atomic_file(png, "wb") as f:
            figure.savefig(f, dpi=110, format="png")
    except OSError as exc:
        raise RunDirError(f"--output: cannot write the report to {png}: {exc.strerror or exc}. Fix: choose another --output path.") from None
    return png, figure, summary_lines(run, png)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-lightning report",
        description="Plot a run's loss, gradient norm, learning rate and validation metrics; print a summary.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/embedded/version_0")
    parser.add_argument("-o", "--output", help=f"PNG path (default RUN_DIR/{REPORT_FILE})")
    return parser


def main(argv: Sequence[str], stream: TextIO | None = None) -> None:
    args = build_parser().parse_args(list(argv))
    _, _, lines = write_report(args.run_dir, args.output)
    print("\n".join(lines), file=stream or sys.stdout, flush=True)


def _plot(ax: Axes, series: Series | None, label: str, style: str) -> None:
    if series:
        steps, values = zip(*series)
        ax.plot(steps, values, style, label=label, linewidth=1.2, markersize=4)


def _positive(series: Series | None) -> bool:
    return bool(series) and all(v > 0 and math.isfinite(v) for _, v in series or [])


def _log_label(value: float, _position: object = None) -> str:
    """Plain numbers on log axes, and only at 1, 2 and 5 times a power of ten."""
    if value <= 0 or not math.isfinite(value):
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else ""


_LOG_LABELS = FuncFormatter(_log_label)


def _draw_marks(ax: Axes, marks: Sequence[Mark]) -> None:
    labelled: set[str] = set()
    for mark in marks:
        color, label = _MARK_STYLE.get(mark.action, ("gray", mark.action))
        ax.axvline(
            mark.step, color=color, linestyle=":", linewidth=1.4, label=None if mark.action in labelled else label
        )
        labelled.add(mark.action)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (config.yaml or metrics.csv missing)"
    minutes, secs = divmod(int(round(seconds)), 60)
    return (f"{minutes} min {secs} s" if minutes else f"{secs} s") + " (config.yaml written -> last metrics write)"
