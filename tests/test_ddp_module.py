"""SFTModule under DDP, 2 processes on CPU (gloo): the whole path (fit, validation with its samples, checkpoint,
export) runs and ends. The run directory is resolved on every rank: ``trainer.log_dir`` broadcasts from rank 0,
and asked on rank 0 alone it left rank 0 waiting for ever after the first validation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers.runs import smoke_fit


@pytest.mark.slow
def test_two_process_ddp_fit_validates_checkpoints_and_exports(tmp_path: Path) -> None:
    try:
        result = smoke_fit(tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process DDP fit hung (a collective that only one rank issued)")
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "runs" / "smoke" / "version_0"
    assert "val/accuracy" in result.stdout and (run_dir / "val_samples.jsonl").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
