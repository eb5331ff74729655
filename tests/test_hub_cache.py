"""``--model.model ORG/NAME``: a hub id found in the local Hugging Face cache loads offline (model and tokenizer),
and one that is not there ends in one error line naming the fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers.paths import CLI, REPO

from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama

HUB_ID = "tester/tiny-llama"


def cache_with_model(hf_home: Path) -> None:
    """The layout ``huggingface_hub`` writes on a download: a snapshot directory and the ref naming it."""
    repo = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    build_tiny_llama().save_pretrained(snapshot)
    build_char_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def fit_with(model: str, hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    args = ["fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--model.model", model, "--trainer.max_steps", "2",
            "--data.val_size", "4", "--model.max_new_tokens", "2"]
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_hub_id_in_the_local_cache_trains_offline(tmp_path: Path) -> None:
    cache_with_model(tmp_path / "hf")
    result = fit_with(HUB_ID, tmp_path / "hf", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "smoke" / "version_0" / "adapter" / "adapter_config.json").is_file()


def test_a_hub_id_not_in_the_cache_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    result = fit_with("tester/not-downloaded", tmp_path / "hf", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "tester/not-downloaded" in error[0] and "Fix:" in error[0], result.stderr[-2000:]

