"""One rule for "is a loss scaler active?", shared by the callback and by modules that choose their optimiser.

A precision plugin may hold a ``GradScaler`` that is disabled (``enabled=False``): it then neither scales the
loss nor unscales gradients nor skips steps, so for every purpose here it is no scaler at all.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def active_scaler(precision_plugin: Any) -> Any:
    """The precision plugin's GradScaler when it exists and is enabled, else ``None``."""
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    return scaler


def scale_tensor(scaler: Any) -> Tensor | None:
    """The scaler's current scale as a device tensor (no host sync), or ``None`` before its first use."""
    scale = getattr(scaler, "_scale", None) if scaler is not None else None
    return scale if isinstance(scale, Tensor) else None
