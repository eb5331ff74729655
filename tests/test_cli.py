"""The CLI end to end, as a user runs it: the `sft-lightning` console script in a subprocess."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import run_cli
from helpers.paths import REPO
from helpers.runs import read_metrics

from sft_lightning.cli.main import main

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["gradient_clip_val"] == 1.0
    assert printed["model"]["model"]
    # The model name drives the tokenizer too (linked, so never set twice).
    assert "tokenizer" not in printed["data"]


def test_requested_defaults_in_configs() -> None:
    sft = yaml.safe_load((REPO / "configs" / "sft.yaml").read_text())
    embedded = yaml.safe_load((REPO / "configs" / "embedded.yaml").read_text())
    assert sft["trainer"]["precision"] == "16-mixed"
    assert "precision" not in embedded["trainer"]  # the machine's (tests/test_precision.py)
    assert "bf16" in (REPO / "configs" / "embedded.yaml").read_text().split("seed_everything")[0]


def test_unknown_config_key_is_reported(tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--model.lora_rank", "8",
        cwd=tmp_path, one_thread=False, tests_on_path=False,
    )
    assert result.returncode != 0
    assert "lora_rank" in result.stderr


def test_smoke_fit_then_validate_from_checkpoint_and_adapter(tmp_path: Path) -> None:
    fit = run_cli("fit", "--config", str(REPO / "configs" / "smoke.yaml"), cwd=tmp_path, one_thread=False, tests_on_path=False)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "smoke" / "version_0"
    assert "==== sft-lightning fit summary ====" in fit.stdout
    assert f"adapter          {Path('runs/smoke/version_0/adapter')}" in fit.stdout

    rows = read_metrics(run_dir)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/accuracy") for r in rows) and any(r.get("val/answer_rate") for r in rows)
    assert (run_dir / "config.yaml").is_file()

    # The checkpoint holds only the LoRA tensors (plus optimiser/loop state).
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["global_step"] == 8

    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    from_ckpt = run_cli(
        "validate", "--config", str(REPO / "configs" / "smoke.yaml"), "--ckpt_path", str(ckpt_path),
        cwd=tmp_path, one_thread=False, tests_on_path=False,
    )
    assert from_ckpt.returncode == 0, from_ckpt.stderr[-3000:]
    from_adapter = run_cli(
        "validate", "--config", str(REPO / "configs" / "smoke.yaml"), "--model.adapter", str(adapter),
        cwd=tmp_path, one_thread=False, tests_on_path=False,
    )
    assert from_adapter.returncode == 0, from_adapter.stderr[-3000:]

    def val_loss(out: str) -> float:
        line = next(row for row in out.splitlines() if row.startswith("val/loss"))
        return float(line.split()[1])

    # Same weights through either route -> the same validation loss as the end of training.
    assert val_loss(from_ckpt.stdout) == pytest.approx(val_loss(fit.stdout), rel=1e-5)
    assert val_loss(from_adapter.stdout) == pytest.approx(val_loss(fit.stdout), rel=1e-5)


def test_fit_resumes_from_checkpoint(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "smoke.yaml")
    first = run_cli("fit", "--config", config, "--trainer.max_steps", "4", cwd=tmp_path, one_thread=False, tests_on_path=False)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        "fit", "--config", config, "--trainer.max_steps", "8", "--ckpt_path", str(ckpt), cwd=tmp_path, one_thread=False, tests_on_path=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(tmp_path / "runs" / "smoke" / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 8

