"""Trip reports: one strict-JSON file per rank in the run directory, rewritten atomically on every trip.

Why atomic: a run that trips is often killed right after; a half-written report is worse than none, so the
file is written to a temporary name in the same directory and moved into place with ``os.replace``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def report_path(directory: str | os.PathLike[str], rank: int) -> Path:
    """``grad_health_report.json`` on rank 0, ``grad_health_report.rank<N>.json`` on the others."""
    name = "grad_health_report.json" if rank == 0 else f"grad_health_report.rank{rank}.json"
    return Path(directory) / name


def json_safe(value: Any) -> Any:
    """Make ``value`` strict-JSON: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_trip(path: Path, trip: dict[str, Any]) -> Path:
    """Add ``trip`` to the report at ``path`` (keeping earlier trips of this run directory) and write it atomically.

    Layout: ``{"version": 1, "trips": [trip, ...]}`` - the last element is the most recent trip.
    """
    trips: list[Any] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if isinstance(previous, dict) and isinstance(previous.get("trips"), list):
                trips = previous["trips"]
        except (OSError, ValueError):
            trips = []  # unreadable: start over rather than fail the run a second time
    trips.append(json_safe(trip))
    write_json_atomic(path, {"version": REPORT_VERSION, "trips": trips})
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
