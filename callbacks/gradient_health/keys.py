"""The names other code reads: the logged metric keys and the report file name.

One owner: the application's report, progress lines and run-file readers import these instead of restating them.
"""

from __future__ import annotations

KEY_GRAD_NORM = "grad_health/grad_norm"
KEY_LOSS_SCALE = "grad_health/loss_scale"
KEY_SKIPPED = "grad_health/skipped_steps"
KEY_ROLLED_BACK = "grad_health/rolled_back_steps"
KEY_SCALER_SKIPPED = "grad_health/scaler_skipped_steps"
KEY_MODULE_PREFIX = "grad_health/grad_norm/"
KEY_SPIKES = "grad_health/spikes"
KEY_SPIKE_SKIPPED = "grad_health/spike_skipped_steps"
KEY_SPIKE_ROLLED_BACK = "grad_health/spike_rolled_back_steps"
KEY_SCHEDULER_HELD = "grad_health/scheduler_held_steps"

REPORT_FILE = "grad_health_report.json"


def report_file(rank: int) -> str:
    """``grad_health_report.json`` on rank 0, ``grad_health_report.rank<N>.json`` on the others."""
    return REPORT_FILE if rank == 0 else f"grad_health_report.rank{rank}.json"
