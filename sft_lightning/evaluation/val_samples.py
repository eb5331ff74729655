"""The validation samples a run shows: a few questions with their expected answer and the model's output, printed
and appended to ``val_samples.jsonl`` in the run directory, so progress is visible in words, not only in numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sft_lightning.data.records import show_answer


@rank_zero_only
def report_val_samples(samples: list[dict[str, Any]], step: int, log_dir: str | None) -> None:
    """Print ``samples`` and append them to ``<log_dir>/val_samples.jsonl`` (rank 0; ``log_dir`` resolved by the
    caller on every rank)."""
    if not samples:
        return
    lines = [f"validation samples (step {step}):"]
    lines += [f"  Q: {s['question']}\n     expected {show_answer(s['expected'])} | output {s['output']!r}" for s in samples]
    rank_zero_info("\n".join(lines))
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(log_dir) / "val_samples.jsonl", "a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}) + "\n")
