"""Reading what a run left in ``runs/<name>/version_N`` for ``ask`` and ``report``: ``config.yaml``, ``metrics.csv`` (or
TensorBoard event files) and ``grad_health_report.json``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from callbacks import KEY_ROLLED_BACK, KEY_SKIPPED, REPORT_FILE

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"


class RunDirError(ValueError):
    """A run directory (or a file in it) is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class Mark:
    """A step the gradient-health callback did not apply normally: skipped, rolled back or aborted."""

    step: int
    action: str  # "skip", "rollback" or "abort"
    diagnosis: str = ""


def require_run_dir(path: str | Path) -> Path:
    """``path`` as a directory, or a RunDirError that says what a run directory is."""
    run_dir = Path(path).expanduser()
    if not run_dir.is_dir():
        what = "is a file, not a directory" if run_dir.exists() else "does not exist"
        raise RunDirError(
            f"run directory {run_dir} {what}. Fix: pass the directory `sft-lightning fit` printed as "
            "'run directory' (runs/<name>/version_N)."
        )
    return run_dir


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config LightningCLI saved for the run, or None if the directory has none."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RunDirError(f"{path}: not valid YAML ({exc}). Fix: restore the file LightningCLI wrote.") from None
    return config if isinstance(config, dict) else None


def clip_threshold(config: dict[str, Any] | None) -> float | None:
    """``trainer.gradient_clip_val`` of the run (None when clipping was off or unknown)."""
    value = ((config or {}).get("trainer") or {}).get("gradient_clip_val")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric as ``(step, value)`` pairs: ``metrics.csv``, else TensorBoard events."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        if _event_files(run_dir):
            return _read_tensorboard(run_dir)
        raise RunDirError(
            f"no {METRICS_FILE} (and no TensorBoard event file) in {run_dir}. Fix: pass the run's version_N "
            "directory, the one `sft-lightning fit` printed as 'run directory'."
        )
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise RunDirError(f"{path}: no 'step' column, so it is not a CSVLogger metrics file. Fix: pass a run directory.")
        for row in reader:
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                continue
            for key, cell in row.items():
                if key in ("step", "epoch") or cell in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((step, float(cell)))
                except ValueError:
                    continue
    if not series:
        raise RunDirError(f"{path}: holds no logged values yet. Fix: wait for the first log step, or check the run.")
    return series


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)


def _read_tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoardLogger run (same tags and steps as the CSV columns)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise RunDirError(
            f"{run_dir} was logged with TensorBoard (no {METRICS_FILE}), and reading it needs the tensorboard "
            "package. Fix: pip install 'sft-lightning[tensorboard]'."
        ) from None
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    series = {
        tag: [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
        for tag in events.Tags().get("scalars", [])
        if tag not in ("epoch", "hp_metric")
    }
    if not series:
        raise RunDirError(f"the TensorBoard events in {run_dir} hold no scalars yet. Fix: wait for the first log step.")
    return series


def read_marks(run_dir: Path, metrics: dict[str, list[tuple[int, float]]]) -> list[Mark]:
    """Skipped/rolled-back/aborted steps: exact ones from ``grad_health_report.json``, and where
    the report is missing, the steps at which the logged skip/rollback counters went up."""
    marks = _report_marks(run_dir / REPORT_FILE)
    for key, action in ((KEY_SKIPPED, "skip"), (KEY_ROLLED_BACK, "rollback")):
        if any(m.action == action for m in marks):
            continue  # the report is exact; the counters only say "somewhere in this interval"
        previous = 0.0
        for step, count in metrics.get(key, []):
            if count > previous:
                marks.append(Mark(step, action, f"{int(count - previous)} in the interval ending here"))
            previous = max(previous, count)
    return sorted(marks, key=lambda m: (m.step, m.action))


def _report_marks(path: Path) -> list[Mark]:
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        trips = report["trips"]
        return [Mark(int(t["global_step"]), str(t["action"]), str(t.get("diagnosis") or "")) for t in trips]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(
            f"{path}: not a GradientHealth report ({exc.__class__.__name__}: {exc}). Fix: remove or restore the file."
        ) from None


def wall_time_s(run_dir: Path) -> float | None:
    """Seconds from the run's start (``config.yaml`` is written before the model loads) to the
    last metrics write; None when either file is missing."""
    config, metrics = run_dir / CONFIG_FILE, run_dir / METRICS_FILE
    if not metrics.is_file() and (events := _event_files(run_dir)):
        metrics = events[-1]
    if not (config.is_file() and metrics.is_file()):
        return None
    seconds = metrics.stat().st_mtime - config.stat().st_mtime
    return seconds if seconds >= 0 else None
