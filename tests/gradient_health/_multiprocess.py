"""Running a multi-process Lightning script from a test: in its own process group, with a timeout, so that a rank
left waiting in a collective fails the test instead of freezing pytest."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest


def run_script(args: list[str], cwd: os.PathLike[str], env: dict[str, str], timeout_s: int, what: str) -> str:
    """Run ``args``; its output, after asserting it ended within ``timeout_s`` with exit code 0."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # rank 1 is rank 0's child: kill the whole group on timeout
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{what} run hung for {timeout_s}s (a rank was left waiting):\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output
