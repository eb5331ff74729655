"""A checkpoint written before the task seam and the callback package still validates, resumes and answers.

``tests/fixtures/smoke-047bccb.ckpt`` was written by ``fit --config configs/smoke.yaml`` at commit 047bccb
(``tests/fixtures/README.md``): its data-module settings are the older ``--data.*`` flags, and its
GradientHealth state is keyed as that version keyed it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from callbacks import GradientHealth
from tests.test_cli import REPO, read_metrics, run_cli

FIXTURE = REPO / "tests" / "fixtures" / "smoke-047bccb.ckpt"
SMOKE = str(REPO / "configs" / "smoke.yaml")


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "old.ckpt"
    shutil.copy(FIXTURE, path)
    return path


def test_old_checkpoint_validates_and_resumes_to_its_next_steps(tmp_path: Path) -> None:
    old = _copy(tmp_path)
    validate = run_cli("validate", "--config", SMOKE, "--ckpt_path", str(old), cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "val/accuracy" in validate.stdout

    fit = run_cli("fit", "--config", SMOKE, "--ckpt_path", str(old), "--trainer.max_steps", "10", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = max((tmp_path / "runs" / "smoke").glob("version_*"))
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 10  # 8 steps from the old checkpoint, 2 trained now
    steps = {int(r["step"]) for r in read_metrics(run_dir) if r.get("train/loss")}
    assert steps and min(steps) >= 8, steps  # nothing before step 8 was trained again
    # the callback's state was found under the key it had then, and carried on
    key = GradientHealth(on_nonfinite="abort").state_key
    old_state = torch.load(old, map_location="cpu", weights_only=False)["callbacks"]
    assert key in old_state and key in resumed["callbacks"]


def test_old_checkpoint_answers_with_the_shipped_parse(tmp_path: Path) -> None:
    result = run_cli("ask", "How many meters are in 6 km?", "--checkpoint", str(_copy(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "How many meters are in 6 km?" in result.stdout
