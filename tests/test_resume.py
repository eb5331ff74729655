"""Interrupting `fit` (SIGTERM, Ctrl+C) and resuming with `--ckpt_path last` gives the same adapter
as an uninterrupted run: through the real CLI, plus the resumable train loader on its own."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import torch
from helpers.runs import MAX_STEPS, adapter_weights, interrupt_at, smoke_fit

from sft_lightning.data.batching import LengthGroupedSampler, ResumableDataLoader


def assert_interrupted(result: subprocess.CompletedProcess, run_dir: Path, signum: signal.Signals, step: int) -> None:
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert f"interrupted by {signum.name} at step {step + 1}" in result.stderr
    assert not (run_dir / "adapter").exists()  # an interrupted run exports nothing
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == step + 1  # the step in flight was completed, then saved


def test_interrupted_fits_resume_to_the_uninterrupted_adapter(tmp_path: Path) -> None:
    """Ctrl+C mid-epoch 0, resume, SIGTERM mid-epoch 1, resume: the adapter of one straight run."""
    (tmp_path / "straight").mkdir()
    reference = smoke_fit(tmp_path / "straight")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = adapter_weights(tmp_path / "straight" / "runs" / "smoke" / "version_0")

    runs = tmp_path / "runs" / "smoke"
    assert_interrupted(smoke_fit(tmp_path, interrupt_at(signal.SIGINT, 5)), runs / "version_0", signal.SIGINT, 5)
    again = smoke_fit(tmp_path, "--ckpt_path", "last", interrupt_at(signal.SIGTERM, 9))
    # Every run gets a new version_N; "last" is the newest checkpoint of any of them.
    assert f"resuming from {Path('runs/smoke/version_0/checkpoints/last.ckpt')}" in again.stderr
    assert_interrupted(again, runs / "version_1", signal.SIGTERM, 9)

    final = smoke_fit(tmp_path, "--ckpt_path", "last")
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resuming from {Path('runs/smoke/version_1/checkpoints/last.ckpt')}" in final.stderr
    state = torch.load(runs / "version_2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == MAX_STEPS

    weights = adapter_weights(runs / "version_2")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------ the resumable loader on its own
class CountingCollate:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items: list[int]) -> list[int]:
        self.calls += 1
        return list(items)


def make_loader(n: int = 44, batch_size: int = 4) -> tuple[ResumableDataLoader, CountingCollate]:
    lengths = [(i * 7) % 13 for i in range(n)]
    collate = CountingCollate()
    sampler = LengthGroupedSampler(lengths, batch_size=batch_size, seed=3, group_factor=2)
    return ResumableDataLoader(list(range(n)), batch_size=batch_size, sampler=sampler, collate_fn=collate), collate


def test_loader_resumes_mid_epoch_without_loading_skipped_batches() -> None:
    loader, _ = make_loader()
    loader.sampler.set_epoch(2)
    full = list(loader)

    interrupted, _ = make_loader()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(4)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 4}

    resumed, collate = make_loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # Lightning sets the epoch after creating the iterator
    rest = list(resumed)
    assert seen + rest == full
    assert collate.calls == len(full) - 4  # the skipped batches were never loaded
    assert resumed.state_dict() == {"epoch": 2, "batches": len(full)}


def test_loader_state_of_a_finished_epoch_does_not_skip_the_next() -> None:
    loader, _ = make_loader()
    list(loader)  # epoch 0, consumed
    resumed, _ = make_loader()
    resumed.load_state_dict(loader.state_dict())
    resumed.sampler.set_epoch(1)
    reference, _ = make_loader()
    reference.sampler.set_epoch(1)
    assert list(resumed) == list(reference)
    # The resume state is used once: the next epoch starts from its beginning.
    assert len(list(resumed)) == len(reference)
