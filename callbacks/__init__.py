"""Reusable Lightning callbacks (torch + lightning only)."""

from .gradient_health import GradientHealth, NonFiniteTrainingError

__all__ = ["GradientHealth", "NonFiniteTrainingError"]
