"""A time budget together with max_steps or max_epochs: the learning-rate schedule ends with whichever ends the run,
so a small file's run that ends by its epochs has decayed like one the budget ends."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from helpers.paths import CLI, REPO


def logged_lrs(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")]


def test_the_schedule_ends_with_max_epochs_under_a_long_budget(tmp_path: Path) -> None:
    end = ("--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--data.train_size", "96")  # 12 steps
    args = ["fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--budget.minutes", "10", *end,
            "--trainer.log_every_n_steps", "1", "--data.val_size", "4", "--model.max_new_tokens", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([CLI, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ended by the trainer's max_steps/max_epochs" in result.stdout, result.stdout[-2000:]
    lrs = logged_lrs(tmp_path / "runs" / "smoke" / "version_0")
    assert len(lrs) >= 10
    # 0.003 peak; at the last step the cosine is within one step of its floor (0.1 x 0.003), not at the peak
    # where the budget's clock alone would leave it
    assert max(lrs) == pytest.approx(0.003, rel=0.05)
    assert lrs[-1] < 0.0005
