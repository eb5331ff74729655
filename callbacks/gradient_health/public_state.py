"""What GradientHealth tells its users while and after it runs: counters, the trips, the skip list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .act import Counters, SkipList
    from .decide import ScalerTracker


class PublicState:
    """The callback's read-only public state (mixed into ``GradientHealth``, which owns the attributes read)."""

    skip_budget: int
    _counters: Counters
    _scaler: ScalerTracker
    _skip_list: SkipList
    _trips: list[dict[str, Any]]

    @property
    def skipped_steps(self) -> int:
        """Updates dropped by ``on_nonfinite="skip"``."""
        return self._counters.skipped_steps

    @property
    def rolled_back_steps(self) -> int:
        """Updates dropped and replaced by a snapshot restore (``on_nonfinite="rollback"``)."""
        return self._counters.rolled_back_steps

    @property
    def scaler_skipped_steps(self) -> int:
        """Steps the GradScaler skipped as normal fp16 back-off (not trips)."""
        return self._scaler.total_skipped

    @property
    def spikes(self) -> int:
        """Spikes detected (``on_spike`` set), whatever was done about them."""
        return self._counters.spikes

    @property
    def summary(self) -> dict[str, int]:
        """Every counter, each cause apart (non-finite, scaler, spike skips; held LR schedules; skip budget left)."""
        return self._counters.for_report(self._scaler.total_skipped, self.skip_budget)

    @property
    def trips(self) -> list[dict[str, Any]]:
        """The trip records of this process (same content as the JSON report), oldest first."""
        return list(self._trips)

    @property
    def skipped_sample_ids(self) -> list[int]:
        """Sample ids the trips so far named (and those restored from a checkpoint), in the order they were named:
        a data module leaves them out (``SFTDataModule`` does; ``skip_list.json`` beside the report has them too)."""
        return self._skip_list.ids

    @property
    def skip_list(self) -> list[dict[str, Any]]:
        """The skip list's entries: ``id``, the ``step``, the ``cause``, the ``action`` and the ``record``."""
        return self._skip_list.state_dict()
