"""Reusable Lightning callbacks (torch + lightning only)."""
