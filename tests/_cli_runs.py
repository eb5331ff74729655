"""Real runs of the `sft-lightning` console script for the predict/ask/report tests.

``memorised_run`` trains the offline tiny Llama on one question until it answers it in the
trained format (``<answer>6000</answer>``, val accuracy 1.0 after 50 of its 100 steps), so
the tests can check parsed numbers, not only that something was printed. The runs use one
CPU thread: on a shared 2-core machine, two spinning OpenMP threads make a tiny model's steps
several times slower, and the numbers do not depend on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sft_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
CLI = shutil.which("sft-lightning") or str(Path(sys.executable).parent / "sft-lightning")
TRACEBACK = "Traceback (most recent call last)"

TRAINED_QUESTION = "How many meters are in 6 km?"
TRAINED_ANSWER = 6000.0
MEMORISE = (
    "--trainer.max_steps", "100",
    "--trainer.val_check_interval", "50",
    "--model.learning_rate", "0.03",
    "--model.lora_r", "16",
    "--model.max_new_tokens", "24",
)


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # the tests directory too, so a run can use a test-only callback (``test_resume.SignalAt``)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def memorised_run(cwd: Path) -> Path:
    """A finished smoke fit in ``cwd`` (runs/smoke/version_0) that answers TRAINED_QUESTION."""
    data = cwd / "one.json"
    data.write_text(json.dumps([[TRAINED_QUESTION, TRAINED_ANSWER]] * 16))
    fit = run_cli("fit", "--config", SMOKE, *MEMORISE, "--data.train_file", str(data), "--data.val_file", str(data), cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert re.search(r"^val/accuracy +1\.0000 ", fit.stdout, re.MULTILINE), fit.stdout[-2000:]
    return cwd / "runs" / "smoke" / "version_0"


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """``sft-lightning ARGS`` in this process (fast for error paths): exit code and output."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line holding every fragment; returns it."""
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 2, tail
    assert TRACEBACK not in result.stderr, tail
    lines = error_lines(result)
    assert len(lines) == 1, tail
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
