"""Same seed, same CPU smoke run -> bit-identical metrics and adapter; another seed -> other weights."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from helpers.paths import SMOKE
from safetensors.torch import load_file


def fit(cwd: Path, *overrides: str) -> Path:
    proc = run_cli(
        "fit", "--config", SMOKE, "--trainer.accelerator", "cpu", *overrides,
        cwd=cwd, timeout=600, one_thread=False, tests_on_path=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = cwd / "runs" / "smoke" / "version_0"
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "a": fit(tmp_path_factory.mktemp("seed0_a"), "--seed_everything", "0"),
        "b": fit(tmp_path_factory.mktemp("seed0_b"), "--seed_everything", "0"),
        "other": fit(tmp_path_factory.mktemp("seed1"), "--seed_everything", "1"),
    }


# measured with the wall clock, so they differ between identical runs (present and non-empty is checked)
WALL_CLOCK_COLUMNS = {"train/tokens_per_s"}


def read_metrics(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_same_seed_gives_identical_metrics(runs: dict[str, Path]) -> None:
    header_a, rows_a = read_metrics(runs["a"])
    header_b, rows_b = read_metrics(runs["b"])
    assert header_a == header_b
    assert {"train/loss", "val/loss", "val/accuracy", "val/answer_rate"} <= set(header_a), header_a
    assert len(rows_a) == len(rows_b) and rows_a
    compared = 0
    for i, (row_a, row_b) in enumerate(zip(rows_a, rows_b)):
        for key in header_a:
            a, b = row_a[key], row_b[key]
            assert (a == "") == (b == ""), f"row {i} {key}: {a!r} vs {b!r}"
            if a and key not in WALL_CLOCK_COLUMNS:
                assert float(a) == float(b), f"row {i} {key}: {a} != {b}"
                compared += 1
    losses = [float(r["train/loss"]) for r in rows_a if r["train/loss"]]
    assert len(losses) >= 2 and compared > len(losses)


def test_same_seed_gives_identical_adapter_weights(runs: dict[str, Path]) -> None:
    weights_a, weights_b = adapter_weights(runs["a"]), adapter_weights(runs["b"])
    assert weights_a and weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name


def test_different_seed_gives_different_weights(runs: dict[str, Path]) -> None:
    weights_a, weights_other = adapter_weights(runs["a"]), adapter_weights(runs["other"])
    assert weights_a.keys() == weights_other.keys()
    differing = [name for name, tensor in weights_a.items() if not torch.equal(tensor, weights_other[name])]
    assert differing, "a different --seed_everything produced bit-identical adapter weights"
    lora_a = [name for name in weights_a if "lora_A" in name]
    assert lora_a and set(lora_a) <= set(differing), "LoRA A initialisation should depend on the seed"
