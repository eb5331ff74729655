"""The skip list: every sample a trip named (a skip, a rollback, a spike, an abort), kept so it stays out.

A skipped update does not keep its batch away: the same record comes back next epoch and after a resume. The
callback adds the samples each trip names (with the step, the cause and the record) to this list, keeps it in
its checkpoint state, and writes it to ``skip_list.json`` beside the report. Any data module can read
``GradientHealth.skipped_sample_ids`` and leave them out; ``SFTDataModule`` does, on resume and when a later
fit is given the file (``--data.skip_list``). Under DDP every rank's samples are gathered at the trip (every
rank trips at the same step), so rank 0's checkpoint holds them all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .provenance import Provenance

FILE_NAME = "skip_list.json"


class SkipList:
    """Samples named by trips, in the order they were named; one entry per sample id."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    @property
    def ids(self) -> list[int]:
        return [int(entry["id"]) for entry in self.entries]

    def add(self, provenance: Provenance | None, step: int, cause: str, action: str) -> list[dict[str, Any]]:
        """Add the samples ``provenance`` names (all ranks' under DDP); returns the entries that were new."""
        named = _named(provenance)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, named)
            named = [item for rank_items in gathered for item in rank_items]
        known = set(self.ids)
        new = []
        for sample_id, record in named:
            if sample_id not in known:
                known.add(sample_id)
                new.append({"id": sample_id, "step": step, "cause": cause, "action": action, "record": record})
        self.entries += new
        return new

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """``skip_list.json`` in ``directory`` (written whole, then renamed: a reader never sees half a file)."""
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"sample_ids": self.ids, "samples": self.entries}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def state_dict(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.entries]

    def load_state_dict(self, entries: list[dict[str, Any]] | None) -> None:
        self.entries = [dict(entry) for entry in entries or []]  # absent in older checkpoints: empty


def read_skip_list(path: str | os.PathLike[str]) -> list[int]:
    """The sample ids of a ``skip_list.json`` (or of a plain JSON list of ids)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = data.get("sample_ids") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: expected {FILE_NAME} ({{'sample_ids': [int, ...], ...}}) or a JSON list of ints")
    return ids


def _named(provenance: Provenance | None) -> list[tuple[int, str | None]]:
    """``(sample id, record)`` pairs a trip's provenance names (non-finite rows, else spike rows)."""
    if provenance is None:
        return []
    samples = provenance.samples or {}
    ids = samples.get("nonfinite_ids") or samples.get("spike_ids") or []
    records = samples.get("records") or []
    out = []
    for k, sample_id in enumerate(ids):
        if isinstance(sample_id, int) and not isinstance(sample_id, bool):
            out.append((sample_id, records[k] if k < len(records) else None))
    return out
