"""Evaluation: generation, answers read and scored, the validation metrics and predictions."""
