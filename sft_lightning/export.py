"""Writing the trained adapter as a standard peft directory, atomically.

The directory (``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer files) loads
with ``PeftModel.from_pretrained(base, path)`` in a plain transformers program. It is written
to a temporary sibling and renamed into place, so an interrupted export never leaves a
half-written adapter where a good one was.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from sft_lightning.atomic import atomic_directory


def export_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path) -> Path:
    """Save ``model``'s adapter (and the tokenizer) to ``out_dir``, replacing any previous one."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
