"""Reusable Lightning callbacks (torch + lightning only)."""

from .gradient_health import GradientHealth, GradientHealthConfigError, NonFiniteTrainingError

__all__ = ["GradientHealth", "GradientHealthConfigError", "NonFiniteTrainingError"]
