"""Reusable Lightning callbacks (torch + lightning only)."""

from .gradient_health import *  # noqa: F403
from .gradient_health import __all__  # noqa: F401
