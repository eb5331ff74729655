"""Where things are: the repository, its tests directory, the smoke config and the ``sft-lightning`` console script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"  # on a CLI run's PYTHONPATH, so that it can load ``helpers.faults`` and the like by class path
SMOKE = str(REPO / "configs" / "smoke.yaml")
# the console script of the interpreter running the tests (another one on PATH may be another install)
_BESIDE = Path(sys.executable).parent / "sft-lightning"
CLI = str(_BESIDE) if _BESIDE.is_file() else shutil.which("sft-lightning") or str(_BESIDE)
