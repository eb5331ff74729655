"""The embedded SmolLM2 GGUF: converted once, cached, and the cached copy loads fast and trains."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from sft_lightning.models.loading import cached_gguf_conversion, embedded_gguf_path, load_model, load_tokenizer

pytestmark = pytest.mark.slow


def test_gguf_conversion_is_cached_and_unmarked(tmp_path: Path) -> None:
    gguf = embedded_gguf_path()
    first = cached_gguf_conversion(gguf, tmp_path)
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    # No half-written temporary directories are left behind.
    assert [p.name for p in first.parent.iterdir()] == [first.name]

    start = time.perf_counter()
    again = cached_gguf_conversion(gguf, tmp_path)
    model = load_model(str(gguf), tmp_path)
    tokenizer = load_tokenizer(str(gguf), tmp_path)
    elapsed = time.perf_counter() - start
    assert again == first
    assert elapsed < 10, f"second load took {elapsed:.1f}s; the cache is not being used"

    # The GGUF 'quantised' marker is gone, so training code accepts the model.
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
