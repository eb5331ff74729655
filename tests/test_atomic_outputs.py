"""An interrupted checkpoint or adapter export leaves the previous good file in place, loadable,
with no temporary file behind. Interruptions are real: half the bytes are written, then
KeyboardInterrupt."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from helpers.paths import REPO
from peft import LoraConfig, PeftModel, get_peft_model

from sft_lightning.cli.checkpoint_io import AtomicCheckpointIO
from sft_lightning.cli.export import export_adapter
from sft_lightning.cli.main import SFTLightningCLI
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.models.loading import load_model
from sft_lightning.module import SFTModule

REAL_TORCH_SAVE = torch.save


WRITTEN_TO: list[str] = []


def _written_path(f: Any) -> str:
    """Where torch.save writes: a path, or the file an open file object (an fd from os.fdopen) refers to."""
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    name = getattr(f, "name", "<memory>")
    return os.readlink(f"/proc/self/fd/{name}") if isinstance(name, int) else str(name)


def torch_save_half_then_interrupt(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    WRITTEN_TO.append(_written_path(f))
    buffer = io.BytesIO()
    REAL_TORCH_SAVE(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
    else:
        f.write(data[: len(data) // 2])
        f.flush()
    raise KeyboardInterrupt


def replace_interrupted(src: Any, dst: Any) -> None:
    raise KeyboardInterrupt


def checkpoint(step: int) -> dict[str, Any]:
    return {"global_step": step, "state_dict": {"lora_A": torch.full((64, 64), float(step))}}


@pytest.mark.parametrize("where", ["while writing", "at the rename"])
def test_interrupted_checkpoint_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    checkpoint_io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint(checkpoint(4), path)

    WRITTEN_TO.clear()
    with monkeypatch.context() as patch:
        if where == "while writing":
            patch.setattr(torch, "save", torch_save_half_then_interrupt)
        else:
            patch.setattr(os, "replace", replace_interrupted)
        with pytest.raises(KeyboardInterrupt):
            checkpoint_io.save_checkpoint(checkpoint(5), path)

    if where == "while writing":
        # Straight to a sibling file: a rename within one filesystem is atomic, a cross-device
        # move (Lightning's system-temp-dir approach) is a copy into the final path.
        assert [Path(name).parent for name in WRITTEN_TO] == [path.parent]
    kept = checkpoint_io.load_checkpoint(path)
    assert kept["global_step"] == 4
    torch.testing.assert_close(kept["state_dict"]["lora_A"], checkpoint(4)["state_dict"]["lora_A"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left

    checkpoint_io.save_checkpoint(checkpoint(6), path)  # and the next save still works
    assert checkpoint_io.load_checkpoint(path)["global_step"] == 6
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_every_cli_run_writes_checkpoints_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sft-lightning"])
    cli = SFTLightningCLI(
        SFTModule, SFTDataModule, auto_configure_optimizers=False, run=False,
        args=["--config", str(REPO / "configs" / "smoke.yaml")],
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def tiny_peft_model() -> PeftModel:
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(load_model("tiny-random"), config)


def test_interrupted_export_keeps_the_previous_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_peft_model()
    out = export_adapter(model, None, tmp_path / "adapter")
    good = safetensors.torch.load_file(out / "adapter_model.safetensors")

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(1.0)

    def save_half_then_interrupt(tensors: dict[str, torch.Tensor], filename: str, metadata: Any = None) -> None:
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    import peft.peft_model

    with monkeypatch.context() as patch:
        patch.setattr(peft.peft_model, "safe_save_file", save_half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            export_adapter(model, None, out)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp or old directory left
    kept = safetensors.torch.load_file(out / "adapter_model.safetensors")
    assert kept.keys() == good.keys()
    for name, tensor in good.items():
        torch.testing.assert_close(kept[name], tensor, rtol=0, atol=0)
    loaded = PeftModel.from_pretrained(load_model("tiny-random"), out)  # still a loadable adapter
    assert any("lora_" in name for name, _ in loaded.named_parameters())
