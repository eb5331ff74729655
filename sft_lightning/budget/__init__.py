"""The wall-clock budget: the clock, the validation estimate, the learning-rate schedule and the outlook."""
