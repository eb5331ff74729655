"""Real ``sft-lightning fit`` runs the tests share, and what a run leaves behind (metrics, adapter).

``smoke_fit`` is a short smoke fit (12 steps, brief validation) that ``interrupt_at`` can stop by a signal mid-step.
``memorised_run`` trains the offline tiny Llama on one question until it answers it in the trained format
(``<answer>6000</answer>``, val accuracy 1.0 after 50 of its 100 steps), so the tests can check parsed numbers, not
only that something was printed.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from .cli import run_cli
from .paths import SMOKE

# smoke.yaml has 64 training examples in batches of 8: 8 steps per epoch, so 12 steps end mid-epoch 1.
MAX_STEPS = 12

TRAINED_QUESTION = "How many meters are in 6 km?"
TRAINED_ANSWER = 6000.0
MEMORISE = (
    "--trainer.max_steps", "100",
    "--trainer.val_check_interval", "50",
    "--model.learning_rate", "0.03",
    "--model.lora_r", "16",
    "--model.max_new_tokens", "24",
)


def smoke_fit(cwd: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``fit`` of configs/smoke.yaml for MAX_STEPS in ``cwd`` (the tests directory on its PYTHONPATH)."""
    args = ["fit", "--config", SMOKE, "--trainer.max_steps", str(MAX_STEPS)]
    # Validation still runs every 4 steps (it shapes the loop state that is saved), but briefly.
    args += ["--data.val_size", "4", "--model.max_new_tokens", "2", *extra]
    return run_cli(*args, cwd=cwd, timeout=timeout, one_thread=False)


def interrupt_at(signum: signal.Signals, step: int) -> str:
    """The argument that adds ``helpers.faults.SignalAt``: ``signum`` in the optimizer step that follows ``step``."""
    callback = {"class_path": "helpers.faults.SignalAt", "init_args": {"signum": int(signum), "step": step}}
    return f"--trainer.callbacks+={json.dumps(callback)}"


def memorised_run(cwd: Path) -> Path:
    """A finished smoke fit in ``cwd`` (runs/smoke/version_0) that answers TRAINED_QUESTION."""
    data = cwd / "one.json"
    data.write_text(json.dumps([[TRAINED_QUESTION, TRAINED_ANSWER]] * 16))
    fit = run_cli("fit", "--config", SMOKE, *MEMORISE, "--data.train_file", str(data), "--data.val_file", str(data), cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert re.search(r"^val/accuracy +1\.0000 ", fit.stdout, re.MULTILINE), fit.stdout[-2000:]
    return cwd / "runs" / "smoke" / "version_0"


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """A run's metrics.csv, as written (strings)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")
