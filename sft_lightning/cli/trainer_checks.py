"""``trainer.*`` values that Lightning accepts and misuses later (a negative ``log_every_n_steps``), checked before anything
loads, and Lightning's own refusals at ``Trainer(...)`` reworded to name the key. Values only: combinations are Lightning's.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Timer

from sft_lightning.errors import ConfigError, check, check_directory, finite

# key: (smallest allowed integer, what the smallest means / the fix)
_MINIMUM: dict[str, tuple[int, str]] = {
    "max_epochs": (-1, "-1 trains until max_steps or a budget ends it"),
    "min_epochs": (0, "0 (or null) sets no minimum"),
    "max_steps": (-1, "-1 sets no step limit"),
    "min_steps": (0, "0 (or null) sets no minimum"),
    "check_val_every_n_epoch": (1, "1 validates after every epoch; null validates on val_check_interval only"),
    "num_sanity_val_steps": (-1, "0 skips the sanity check, -1 runs the whole validation set"),
    "log_every_n_steps": (1, "use e.g. 10"),
    "accumulate_grad_batches": (1, "1 steps the optimizer after every batch"),
    "reload_dataloaders_every_n_epochs": (0, "0 never reloads"),
    "num_nodes": (1, "1 on a single machine"),
}


def check_trainer_arguments(trainer: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first ``trainer.*`` value out of range (``trainer``: the parsed section)."""
    for key, (minimum, fix) in _MINIMUM.items():
        value = trainer.get(key)
        if value is not None and not isinstance(value, bool):
            check(value >= minimum, f"trainer.{key}", value, f">= {minimum}" + (" or null" if key.startswith("min_") else ""), fix)
    clip = trainer.get("gradient_clip_val")
    if clip is not None:
        check(finite(clip) and clip >= 0, "trainer.gradient_clip_val", clip, "a finite number >= 0 (or null)", "use 1.0, as the shipped configs do")
    registry = trainer.get("model_registry")
    if registry is not None:
        check(bool(str(registry).strip()), "trainer.model_registry", registry, "a registry model name or null", "leave it unset")
    if trainer.get("default_root_dir") is not None:
        check_directory("trainer.default_root_dir", trainer["default_root_dir"])
    _check_max_time(trainer.get("max_time"))


def _check_max_time(value: Any) -> None:
    if value is None:
        return
    try:
        Timer(duration=value)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"trainer.max_time: {value!r} is not a duration ({exc}). Fix: write DD:HH:MM:SS, e.g. 00:00:15:00, "
            "or use --budget.minutes, which also completes the learning-rate schedule."
        ) from None


def trainer_argument_error(exc: BaseException) -> ConfigError | None:
    """Lightning's ``ValueError``/``TypeError`` about one of the Trainer's own arguments, as a ConfigError
    naming ``trainer.KEY``; None for anything else (an unexpected error keeps its traceback)."""
    if not isinstance(exc, (ValueError, TypeError, MisconfigurationException)):
        return None
    names = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    named = [name for name in re.findall(r"`(\w+)", str(exc)) if name in names]
    if not named:
        return None
    return ConfigError(f"trainer.{named[0]}: {exc} Fix: change --trainer.{named[0]} (see sft-lightning fit --help).")
