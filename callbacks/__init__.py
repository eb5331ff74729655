"""Reusable Lightning callbacks (torch + lightning only)."""

from ._precision import active_scaler
from .gradient_health import GradientHealth, GradientHealthConfigError, NonFiniteTrainingError

__all__ = ["GradientHealth", "GradientHealthConfigError", "NonFiniteTrainingError", "active_scaler"]
