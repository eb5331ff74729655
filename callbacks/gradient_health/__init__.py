"""GradientHealth, the per-step pass in modules by role: measure -> decide -> act -> report (+ replay, provenance).

Imports only the standard library, torch and lightning.
"""

from .act import read_skip_list
from .callback import GradientHealth
from .preflight import GradientHealthConfigError, NonFiniteTrainingError, TrainingSpikeError, active_scaler
from .report import (
    KEY_GRAD_NORM,
    KEY_LOSS_SCALE,
    KEY_MODULE_PREFIX,
    KEY_ROLLED_BACK,
    KEY_SCALER_SKIPPED,
    KEY_SCHEDULER_HELD,
    KEY_SKIPPED,
    KEY_SPIKE_ROLLED_BACK,
    KEY_SPIKE_SKIPPED,
    KEY_SPIKES,
    REPORT_FILE,
    atomic_file,
    fsync_directory,
)

__all__ = [
    "GradientHealth",
    "GradientHealthConfigError",
    "NonFiniteTrainingError",
    "TrainingSpikeError",
    "active_scaler",
    "read_skip_list",
    "atomic_file",
    "fsync_directory",
    "KEY_GRAD_NORM",
    "KEY_LOSS_SCALE",
    "KEY_MODULE_PREFIX",
    "KEY_ROLLED_BACK",
    "KEY_SCALER_SKIPPED",
    "KEY_SCHEDULER_HELD",
    "KEY_SKIPPED",
    "KEY_SPIKE_ROLLED_BACK",
    "KEY_SPIKE_SKIPPED",
    "KEY_SPIKES",
    "REPORT_FILE",
]
