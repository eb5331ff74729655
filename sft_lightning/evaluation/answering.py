"""A trained model for answering questions, from whatever a run left: adapter, checkpoint or run directory.

No LightningCLI, no Trainer: the very ``SFTModule`` that trained (its prompts, LoRA wiring, generation), under the run's precision.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sft_lightning.cli.checkpoint_io import read_checkpoint
from sft_lightning.cli.run_files import read_run_config
from sft_lightning.data.batching import left_pad
from sft_lightning.data.prompt import encode_segments, prompt_segments
from sft_lightning.data.records import DataError
from sft_lightning.evaluation.predict import Prediction, make_predictions
from sft_lightning.models.loading import ModelLoadError
from sft_lightning.models.precision import base_dtype_for, choose_precision, probe_cpu, slow_precision_warning
from sft_lightning.module import SFTModule
from sft_lightning.tasks.base import Task
from sft_lightning.tasks.flags import prompt_format_of_run_config, prompt_style, task_of_run_config

_SOURCE_HINT = "an adapter directory (runs/<name>/version_N/adapter), a .ckpt file or a run directory (runs/<name>/version_N)"


@dataclass(frozen=True)
class TrainedSource:
    """Where the trained weights are, and the run directory they came from (if known)."""

    kind: str  # "adapter" or "checkpoint"
    path: Path
    run_dir: Path | None


def find_trained(path: str | Path, kind: str | None = None) -> TrainedSource:
    """Identify ``path`` as an adapter dir, a checkpoint or a run dir (``kind`` says which was meant)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist. Fix: pass {_SOURCE_HINT}.")
    if path.is_file():
        if path.suffix != ".ckpt":
            raise ModelLoadError(f"{path} is a file but not a .ckpt checkpoint. Fix: pass {_SOURCE_HINT}.")
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return TrainedSource("checkpoint", path, run_dir if run_dir and (run_dir / "config.yaml").is_file() else None)
    if (path / "adapter_config.json").is_file():
        parent = path.parent
        return TrainedSource("adapter", path, parent if (parent / "config.yaml").is_file() else None)
    if kind == "adapter":
        raise ModelLoadError(
            f"adapter directory {path} has no adapter_config.json. Fix: pass the 'adapter' directory written at the end "
            "of `sft-lightning fit` (inside the run directory), or use --run / --checkpoint."
        )
    config = read_run_config(path) or {}
    adapter = path / str((config.get("model") or {}).get("export_dir_name") or "adapter")
    if (adapter / "adapter_config.json").is_file():
        return TrainedSource("adapter", adapter, path)
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return TrainedSource("checkpoint", last, path)
    raise ModelLoadError(
        f"{path} holds neither an exported adapter ({adapter.name}/adapter_config.json) nor checkpoints/last.ckpt. "
        f"Fix: pass {_SOURCE_HINT}; a run directory has an adapter once `fit` has finished."
    )


def load_trained(
    source: TrainedSource,
    model: str | None = None,
    cache_dir: str | None = None,
    max_new_tokens: int | None = None,
    device: str = "cpu",
    precision: str | None = None,
) -> SFTModule:
    """The trained SFTModule in eval mode on ``device``; ``model``/``cache_dir`` override the base; the
    frozen base's dtype follows ``precision`` (the one answers are generated under), as in training."""
    if source.kind == "checkpoint":
        checkpoint = _read_checkpoint(source.path)
        hparams = _module_kwargs(checkpoint["hyper_parameters"])
    else:
        checkpoint = None
        hparams = _adapter_hparams(source)
        hparams["adapter"] = str(source.path)
    if model is not None:
        hparams["model"] = model
    if cache_dir is not None:
        hparams["cache_dir"] = cache_dir
    if max_new_tokens is not None:
        hparams["max_new_tokens"] = max_new_tokens
    if hparams.get("base_dtype", "auto") in ("auto", "bfloat16", "float32"):
        hparams["base_dtype"] = base_dtype_for(precision)
    if not hparams.get("model"):
        raise ModelLoadError(
            f"cannot tell which base model {source.path} was trained on (no run config.yaml beside it and no "
            "base_model_name_or_path in adapter_config.json). Fix: pass --model NAME (e.g. embedded, tiny-random)."
        )
    hparams["compile"] = False  # a training-only speed-up: generation runs eagerly anyway
    module = SFTModule(**hparams)
    module.task = _run_task(source, checkpoint)
    module.configure_model()
    data = _run_data(source, checkpoint)
    module.prompt_style = prompt_style(module.task, prompt_format_of_run_config(data), module.tokenizer, hparams["model"])
    if checkpoint is not None:
        module.on_load_checkpoint(checkpoint)  # raises a clear error when the LoRA tensors do not match
        module.load_state_dict(checkpoint["state_dict"], strict=False)
    return module.to(device).eval()


def run_precision(source: TrainedSource) -> str | None:
    """``trainer.precision`` of the run that trained the weights, when its config is known."""
    if source.run_dir is None:
        return None
    config = read_run_config(source.run_dir) or {}
    precision = (config.get("trainer") or {}).get("precision")
    return None if precision is None else str(precision)


def answer_precision(trained_with: str | None, device: str) -> tuple[str | None, str | None]:
    """The precision to answer under, and a note when it differs from the run's: the run's precision, unless
    this machine would run it much slower (bf16 on a CPU without native bf16), then the machine's own."""
    device_type = torch.device(device).type
    if device_type != "cpu" or trained_with is None:
        return trained_with, None
    facts = probe_cpu()
    if slow_precision_warning(trained_with, "cpu", facts) is None:
        return trained_with, None
    choice = choose_precision("cpu", facts)
    note = f"the run trained under {trained_with}; answering under {choice.precision} ({choice.reason})"
    return choice.precision, note


@contextlib.contextmanager
def autocast_for(precision: str | None, device: str) -> Iterator[None]:
    """The autocast Lightning uses for ``precision`` (``16-mixed`` is bf16 on CPU, as in Lightning)."""
    device_type = torch.device(device).type
    dtype = None
    if precision in ("bf16-mixed", "bf16"):
        dtype = torch.bfloat16
    elif precision in ("16-mixed", "16"):
        dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def answer_questions(
    module: SFTModule, questions: Sequence[str], precision: str | None = None, batch_size: int = 16
) -> list[Prediction]:
    """Greedy answers to ``questions``: the training prompt format (``module.prompt_style``), generation and reading."""
    tokenizer = module.tokenizer
    assert tokenizer is not None, "load_trained() builds the tokenizer"
    device = str(module.device)
    rows: list[Prediction] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start : start + batch_size])
        style = getattr(module, "prompt_style", "bare")
        ids = [row for row, _ in encode_segments(tokenizer, [prompt_segments([("user", q)], style, tokenizer) for q in chunk])]
        for offset, row in enumerate(ids):
            _check_fits(module, len(row), start + offset, chunk[offset])
        prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
        with torch.inference_mode(), autocast_for(precision, device):
            texts, finished = module.generate_outputs(prompt_ids.to(device), prompt_mask.to(device))
        indices = range(start, start + len(chunk))
        tolerance = module.hparams.relative_tolerance
        rows += make_predictions(indices, chunk, texts, [None] * len(chunk), tolerance, module.task_in_use(), finished)
    return rows


def _run_task(source: TrainedSource, checkpoint: dict[str, Any] | None) -> Task:
    """The task the weights were trained for (its parse and generation hook): from the run's config, else the
    checkpoint's data-module settings, else the shipped task."""
    return task_of_run_config(_run_data(source, checkpoint))


def _run_data(source: TrainedSource, checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data settings the weights were trained with: the run's config, else the checkpoint's."""
    if source.run_dir is not None:
        return (read_run_config(source.run_dir) or {}).get("data")
    return (checkpoint or {}).get("datamodule_hyper_parameters")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = read_checkpoint(path)
    if "hyper_parameters" not in checkpoint:
        raise ModelLoadError(
            f"{path} is not an sft-lightning checkpoint (no hyper_parameters/state_dict). "
            "Fix: pass checkpoints/last.ckpt of a `sft-lightning fit` run."
        )
    return checkpoint


def _module_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Only the SFTModule constructor arguments (hparams also carry e.g. ``_instantiator``)."""
    accepted = set(inspect.signature(SFTModule.__init__).parameters) - {"self"}
    return {key: value for key, value in dict(values).items() if key in accepted}


def _adapter_hparams(source: TrainedSource) -> dict[str, Any]:
    """Base model settings for an adapter: the run's config, else adapter_config.json's base path."""
    if source.run_dir is not None:
        config = read_run_config(source.run_dir) or {}
        model_config = config.get("model") or {}
        if isinstance(model_config.get("init_args"), dict):  # class_path/init_args form
            model_config = model_config["init_args"]
        hparams = _module_kwargs(model_config)
        if hparams.get("model"):
            return hparams
    try:
        base = json.loads((source.path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    return {"model": base} if base and Path(base).is_dir() else {}


def _check_fits(module: SFTModule, n_tokens: int, index: int, question: str) -> None:
    """A question plus its answer must fit the model's context window: beyond it a model does not
    answer, it produces whatever its untrained positions give."""
    config = getattr(module.model, "config", None)
    window = getattr(config, "max_position_embeddings", None)
    if window and n_tokens + module.hparams.max_new_tokens > window:
        raise DataError(
            f"question {index} is {n_tokens} tokens long; with {module.hparams.max_new_tokens} tokens for the answer "
            f"that exceeds the model's context window of {window} tokens. Question starts: {question[:60]!r}. "
            "Fix: ask a shorter question."
        )
