"""Writing files and directories atomically: a reader (or a crash) sees the old one or the whole new one.

Every writer of the package goes through here; the recipe and why: docs/design.md, "Checkpoint files".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from callbacks import atomic_file, fsync_directory

__all__ = ["atomic_directory", "atomic_file", "fsync_directory"]


@contextlib.contextmanager
def atomic_directory(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary sibling directory to fill; on a clean exit it replaces ``path``.

    ``keep_existing``: if ``path`` appears meanwhile (another process finished the same work
    first, e.g. a shared cache), keep that one and drop ours.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        old = None
        if path.exists() and not keep_existing:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (keep_existing and path.exists()):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_directory(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
