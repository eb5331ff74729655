"""What a run shows while it trains (progress bar) and where it logs (CSV by default, TensorBoard on request)."""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import lightning.fabric.loggers.tensorboard as fabric_tensorboard
import pytest
import torch
import yaml
from helpers.cli import run_cli
from helpers.paths import REPO, SMOKE

from callbacks import GradientHealth
from sft_lightning.cli.main import build_cli, main

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process fits on one thread (two spinning threads crawl on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("grad_norm_on_bar", [True, False])
def test_progress_bar_shows_loss_grad_norm_and_tokens_per_s(
    grad_norm_on_bar: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    override = tmp_path / "bar.yaml"
    override.write_text(
        yaml.safe_dump(
            {"trainer": {"callbacks": [{"class_path": "callbacks.GradientHealth", "init_args": {"prog_bar": grad_norm_on_bar}}]}}
        )
    )
    cli = build_cli(["fit", "--config", SMOKE, "--config", str(override)])
    shown = cli.trainer.progress_bar_metrics  # what the progress bar displays
    assert {"train/loss", "train/tokens_per_s", "lr"} <= set(shown)
    assert ("grad_health/grad_norm" in shown) is grad_norm_on_bar
    with open(tmp_path / "runs" / "smoke" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = [r for r in rows if r["train/tokens_per_s"]][-1]
    assert shown["train/tokens_per_s"] == pytest.approx(float(last["train/tokens_per_s"]), rel=1e-5)
    assert shown["train/tokens_per_s"] > 0
    if grad_norm_on_bar:
        assert shown["grad_health/grad_norm"] == pytest.approx(float(last["grad_health/grad_norm"]), rel=1e-5)


def test_grad_health_prog_bar_must_be_bool() -> None:
    assert GradientHealth().prog_bar is True
    with pytest.raises(ValueError, match="`prog_bar` must be a bool"):
        GradientHealth(prog_bar="yes")  # type: ignore[arg-type]


def test_every_shipped_config_logs_to_csv_by_default() -> None:
    for config in sorted((REPO / "configs").glob("*.yaml")):
        logger = yaml.safe_load(config.read_text())["trainer"]["logger"]
        assert logger["class_path"] == "lightning.pytorch.loggers.CSVLogger", config.name


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed (pip install 'sft-lightning[tensorboard]')")
def test_tensorboard_logger_run_dir_and_report(tmp_path: Path) -> None:
    """`--trainer.logger TensorBoardLogger`: same run directory layout, and `report` reads the events."""
    fit = run_cli("fit", "--config", SMOKE, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "smoke" / "version_0"
    assert "run directory    runs/smoke/version_0" in fit.stdout
    assert list(run_dir.glob("events.out.tfevents.*")) and not (run_dir / "metrics.csv").exists()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "adapter" / "adapter_config.json").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"

    report = run_cli("report", str(run_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "steps              7" in report.stdout and "mean over 4 logged intervals" in report.stdout
    assert (run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_logger_without_tensorboard_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: trainer.logger TensorBoardLogger needs the tensorboard package, which is not installed. "
        "Fix: pip install 'sft-lightning[tensorboard]' (or pip install tensorboard), or keep the default CSV logger."
    ]
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
