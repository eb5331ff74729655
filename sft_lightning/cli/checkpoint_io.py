"""Checkpoint files on disk: written atomically, and found again for ``--ckpt_path last``.

Why not Lightning's own checkpoint IO, and why ``last`` is looked for across run versions: docs/design.md, "Checkpoint files".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint

from sft_lightning.atomic import atomic_file
from sft_lightning.models.loading import ModelLoadError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that leaves either the old file or the complete new one, never a part."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint file's contents; a missing, damaged or foreign file is a ModelLoadError that says so."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}. Fix: pass checkpoints/last.ckpt of a `sft-lightning fit` run (or 'last').")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch errors alike
        raise ModelLoadError(
            f"could not read checkpoint {path}: {exc.__class__.__name__}: {exc}. The file is damaged or not a checkpoint. "
            "Fix: pass a .ckpt written by `sft-lightning fit` (checkpoints/last.ckpt), or the run's adapter directory."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelLoadError(
            f"{path} is not a Lightning checkpoint (no state_dict). Fix: pass checkpoints/last.ckpt of a `sft-lightning fit` run."
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`atomic_torch_save`.

    Remote (fsspec) paths keep Lightning's behaviour: object stores replace objects whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, os.fspath(path))


def find_last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest ``last*.ckpt`` of this run name, whichever ``version_N`` wrote it (or a fixed ``dirpath``).

    Lightning looks only in the current run's directory, new for every CLI run (docs/design.md, "Checkpoint files").
    """
    directories: set[Path] = set()
    names: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        names.add(callback.CHECKPOINT_NAME_LAST)
        if callback.dirpath is not None:
            directories.add(Path(callback.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir, str(logger.name or ""))
            directories.update(root.glob("*/checkpoints"))
        else:
            directories.add(Path(trainer.default_root_dir) / "checkpoints")
    candidates = [
        path
        for directory in directories
        for path in directory.glob("*.ckpt")
        if any(path.stem.startswith(name) for name in names)  # "last", "last-v1", like Lightning
    ]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))
