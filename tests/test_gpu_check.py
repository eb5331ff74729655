"""`make gpu-check` (benchmarks/gpu.py): skipped cleanly without CUDA, and its whole code path run on the CPU with
the tiny model, so it cannot rot between runs on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from benchmarks import gpu


def test_without_cuda_it_says_skipped_and_exits_0(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"


def test_asking_for_cuda_without_it_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda but torch sees no CUDA device. Fix:"):
        gpu.main(["--device", "cuda"])


def test_readme_table_goes_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{gpu.README_START}\nold\n{gpu.README_END}\nb\n")
    gpu.write_readme(readme, "| new |")
    assert readme.read_text() == f"a\n{gpu.README_START}\n| new |\n{gpu.README_END}\nb\n"


@pytest.mark.slow
def test_the_whole_check_runs_on_cpu_with_the_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [
        sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--model", "tiny-random",
        "--fit-steps", "6", "--val-size", "8", "--questions", "8", "--steps", "1", "--repeats", "1",
        "--set", "model.compile=false", "--set", "data.max_length=256", "--set", "data.train_size=64",
        "--set", "data.eval_batch_size=8", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["accelerator"] == "cpu" and result["passed"] is True
    assert all(result["checks"].values()) and set(result["checks"]) == {
        "fit_all_losses_finite",
        "fit_loss_scale_logged",
        "fit_no_trip",
        "adapter_exported_and_loaded_back",
        "scaler_case_transient_overflow",
        "scaler_case_persistent_overflow",
        "scaler_case_seed_scenario",
    }
    assert result["fit"]["steps"] == 6 and result["fit"]["loss_scale_last"] > 0
    assert result["scaler_cases"]["persistent_overflow"]["error"].startswith("fp16 overflow: scale collapsed")
    assert result["throughput"]["tokens_per_s"]["sftl"] > 0 and result["throughput"]["tokens_per_s"]["hf_dynamic"] > 0
    assert result["validation"]["questions"] == 8 and result["validation"]["generate_and_score_s"] > 0
    assert "| short fit (6 steps, 16-mixed, clip 1.0) |" in done.stdout
