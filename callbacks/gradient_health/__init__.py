"""GradientHealth, one module per step of the per-step pass: measure -> decide -> act -> report (+ replay).

Imports only the standard library, torch and lightning.
"""

from .callback import GradientHealth
from .errors import GradientHealthConfigError, NonFiniteTrainingError, TrainingSpikeError
from .precision import active_scaler

__all__ = [
    "GradientHealth",
    "GradientHealthConfigError",
    "NonFiniteTrainingError",
    "TrainingSpikeError",
    "active_scaler",
]
