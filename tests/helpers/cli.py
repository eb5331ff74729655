"""The ``sft-lightning`` command line from a test: the console script in a subprocess (``run_cli``), ``main`` in this
process for fast error paths (``run_main``), and what a clean error looks like."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sft_lightning.cli.main import main

from .paths import CLI, TESTS

TRACEBACK = "Traceback (most recent call last)"


def cli_env(*, one_thread: bool = True, tests_on_path: bool = True) -> dict[str, str]:
    """This process's environment, offline and unbuffered. ``one_thread``: one OpenMP thread (on a shared 2-core
    machine, two spinning threads make a tiny model's steps several times slower, and the numbers do not depend on
    it). ``tests_on_path``: the tests directory on PYTHONPATH, so that a run can load a test-only callback or
    strategy by class path (``helpers.faults.SignalAt``, ``helpers.strategies.CPUFSDP``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    if tests_on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return env


def run_cli(
    *args: str, cwd: Path, timeout: int = 300, one_thread: bool = True, tests_on_path: bool = True
) -> subprocess.CompletedProcess:
    """``sft-lightning ARGS`` in a subprocess in ``cwd``, in ``cli_env(one_thread, tests_on_path)``; both off: the
    environment of a user's shell, only offline and unbuffered."""
    env = cli_env(one_thread=one_thread, tests_on_path=tests_on_path)
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


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
