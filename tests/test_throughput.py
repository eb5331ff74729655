"""TokenThroughput: tokens per second over a sliding window of training batches."""

from __future__ import annotations

import pytest
import torch

from sft_lightning.budget.throughput import TokenThroughput


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_over_sliding_window_of_consecutive_batches() -> None:
    clock = FakeClock()
    meter = TokenThroughput(window=2, clock=clock)
    assert meter.batch_end() is None
    meter.batch_start(torch.tensor(100))
    clock.now = 1.0
    assert float(meter.batch_end()) == 100.0
    meter.batch_start(300)  # ints work too; counted from the batch's start
    clock.now = 2.0
    assert float(meter.batch_end()) == pytest.approx(400 / 2.0)
    meter.batch_start(torch.tensor(50))  # the window drops the first batch
    clock.now = 4.0
    assert float(meter.batch_end()) == pytest.approx(350 / 3.0)


def test_reset_drops_time_spent_outside_training() -> None:
    clock = FakeClock()
    meter = TokenThroughput(window=4, clock=clock)
    meter.batch_start(100)
    clock.now = 1.0
    meter.batch_end()
    meter.reset()  # validation ran from t=1 to t=60
    clock.now = 60.0
    meter.batch_start(100)
    clock.now = 61.0
    assert float(meter.batch_end()) == 100.0


def test_zero_elapsed_and_bad_window() -> None:
    meter = TokenThroughput(window=1, clock=lambda: 5.0)
    meter.batch_start(10)
    assert meter.batch_end() is None
    meter.resize(3)
    assert meter.window == 3 and meter.batch_end() is None
    with pytest.raises(ValueError, match="window must be >= 1"):
        TokenThroughput(window=0)
