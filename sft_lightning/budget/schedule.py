"""The learning-rate schedule as a function of training progress: linear warm-up, then cosine decay to a floor.

Progress (a share in [0, 1]) is that of the planned steps or, under a ``TimeBudget``, of the budget's time.
"""

from __future__ import annotations

import math


def lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Multiplier of the base learning rate at ``progress``.

    Warm-up rises linearly over the first ``warmup`` share and never returns 0, so the first step
    already moves the weights; after it, cosine decay from 1 to ``floor`` at progress 1 (and
    ``floor`` beyond, should a run overshoot).
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return max(progress / warmup, 0.01)
    decay = (progress - warmup) / (1.0 - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay))
