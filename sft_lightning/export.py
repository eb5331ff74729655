"""Writing the trained adapter as a standard peft directory, atomically.

The directory (``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer files) loads
with ``PeftModel.from_pretrained(base, path)`` in a plain transformers program. It is written
to a temporary sibling and renamed into place, so an interrupted export never leaves a
half-written adapter where a good one was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase


def export_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path) -> Path:
    """Save ``model``'s adapter (and the tokenizer) to ``out_dir``, replacing any previous one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
