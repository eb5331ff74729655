"""Reusable Lightning callbacks (torch + lightning only)."""

from .gradient_health import GradientHealth, GradientHealthConfigError, NonFiniteTrainingError, TrainingSpikeError, active_scaler

__all__ = ["GradientHealth", "GradientHealthConfigError", "NonFiniteTrainingError", "TrainingSpikeError", "active_scaler"]
