"""Writing the trained adapter as a standard peft directory, atomically.

It loads with ``PeftModel.from_pretrained(base, path)`` in a plain transformers program; an interrupted export leaves the old one.
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
