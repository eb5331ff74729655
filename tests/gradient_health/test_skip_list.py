"""The skip list of a plain Lightning project: the samples a trip names are kept, checkpointed, written to
``skip_list.json``, and any data loader can leave them out through ``GradientHealth.skipped_sample_ids``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
from torch.utils.data import DataLoader, Dataset

from callbacks import GradientHealth
from callbacks.gradient_health.act import read_skip_list

from ._plain import Plain, Regression

BAD = 21  # batch 1, row 5


class Filtered(Dataset):
    """The regression batches without the rows a callback has named: what any data module can do."""

    def __init__(self, callback: GradientHealth) -> None:
        self.batches, self.callback = Regression(4).items, callback
        self.batches[1]["x"][5] = math.nan  # a corrupt record: trips whenever it is trained on

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        batch = self.batches[i]
        keep = [r for r, sid in enumerate(batch["sample_ids"].tolist()) if sid not in self.callback.skipped_sample_ids]
        return {key: value[keep] for key, value in batch.items()}


def test_a_named_sample_is_listed_written_checkpointed_and_left_out_by_a_plain_loader(tmp_path: Path) -> None:
    cb = GradientHealth(on_nonfinite="skip", label_key=None)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb],
    )
    trainer.fit(Plain(warmup_steps=1), DataLoader(Filtered(cb), batch_size=None, shuffle=False))
    assert cb.skipped_sample_ids == [BAD]
    assert cb.skipped_steps == 1  # epochs 1 and 2 never saw the record again
    (entry,) = cb.skip_list
    assert entry["step"] == 1 and entry["action"] == "skip" and entry["record"] == f"regression sample {BAD}"
    assert "non-finite" in entry["cause"]
    assert read_skip_list(tmp_path / "skip_list.json") == [BAD]

    restored = GradientHealth(on_nonfinite="skip", label_key=None)
    restored.load_state_dict(cb.state_dict())
    assert restored.skipped_sample_ids == [BAD]
    old = cb.state_dict()
    del old["skip_list"]  # a checkpoint from before the skip list
    restored.load_state_dict(old)
    assert restored.skipped_sample_ids == []


def test_a_skip_list_file_must_hold_sample_ids(tmp_path: Path) -> None:
    path = tmp_path / "skip_list.json"
    path.write_text(json.dumps([3, 7]))
    assert read_skip_list(path) == [3, 7]
    path.write_text(json.dumps({"sample_ids": ["a"]}))
    with pytest.raises(ValueError, match="expected skip_list.json"):
        read_skip_list(path)
