"""Models: loading, the tiny test model, their anatomy, compilation and precision."""
