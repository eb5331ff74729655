"""GradientHealth tests, one file per step of the callback's pass (a package: its file names repeat top-level ones)."""
