"""Configuration errors: a value a user set is out of range, printed by the CLI as one ``error:`` line (exit 2).

``check`` is the one way constructors validate their arguments, so every key is reported alike (key, value, allowed, fix).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the key and the fix."""


def check(ok: bool, key: str, value: Any, allowed: str, fix: str = "") -> None:
    """Raise ConfigError ``KEY must be ALLOWED, got VALUE. Fix: FIX`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}. Fix: {fix or f'set {key} to a value that is {allowed}'}.")


def finite(value: Any) -> bool:
    """A real, finite number (bools excluded: True is not a learning rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_directory(key: str, path: Any) -> None:
    """``path`` is a directory, or can be created: its nearest existing ancestor is a writable directory."""
    target = Path(path).expanduser()
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or (existing.is_dir() and (existing == target or os.access(existing, os.W_OK | os.X_OK))):
        return
    why = f"{existing} is not a directory" if not existing.is_dir() else f"{existing} is not writable"
    raise ConfigError(f"{key}: {str(path)!r} cannot be a directory ({why}). Fix: pass a directory path you can write to.")
