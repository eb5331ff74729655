"""Shared pieces of the benchmarks: the settings of ``configs/embedded.yaml``, the machine description,
memory probes, the model-FLOP formula, paired statistics and result files.

The workload settings are read from the YAML the CLI runs (``make train``), not copied into the
benchmark, so the benchmark measures what users run even after the config changes.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = ROOT / "configs" / "embedded.yaml"
RESULTS_DIR = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ settings
def embedded_settings(path: Path = EMBEDDED_CONFIG) -> dict[str, Any]:
    """``{"model": SFTModule kwargs, "data": SFTDataModule kwargs, "trainer": Trainer kwargs, "callbacks": [...],
    "seed": int}`` as the CLI would build them from the YAML (model.model linked to data.tokenizer)."""
    config = yaml.safe_load(Path(path).read_text())
    model = dict(config.get("model", {}))
    data = dict(config.get("data", {}))
    data.setdefault("tokenizer", model.get("model", "embedded"))
    if "cache_dir" in model:
        data.setdefault("cache_dir", model["cache_dir"])
    trainer = dict(config.get("trainer", {}))
    callbacks = trainer.pop("callbacks", []) or []
    if trainer.get("precision") is None:  # the machine's, as the CLI chooses it (sft_lightning.models.precision)
        from sft_lightning.models.precision import machine_precision

        trainer["precision"] = machine_precision(str(trainer.get("accelerator") or "auto")).precision
    if model.get("base_dtype", "auto") == "auto":  # modules built without a Trainer cannot resolve "auto"
        from sft_lightning.models.precision import base_dtype_for

        model["base_dtype"] = base_dtype_for(trainer["precision"])
    return {"model": model, "data": data, "trainer": trainer, "callbacks": callbacks, "seed": config.get("seed_everything", 0)}


def apply_overrides(settings: dict[str, Any], overrides: Sequence[str] | None) -> dict[str, Any]:
    """``section.key=value`` (value parsed as YAML), e.g. ``model.compile=false`` or ``data.batch_size=8``."""
    for item in overrides or ():
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "data", "trainer"):
            raise ValueError(f"override {item!r}: expected model.KEY=VALUE, data.KEY=VALUE or trainer.KEY=VALUE")
        settings[section][name] = yaml.safe_load(value)
        if key == "model.model":
            settings["data"]["tokenizer"] = settings["model"]["model"]
    return settings


def instantiate(spec: dict[str, Any]) -> Any:
    """A ``{class_path, init_args}`` entry of a LightningCLI YAML."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)(**(spec.get("init_args") or {}))


# ------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags_of_interest() -> list[str]:
    """The ISA extensions that decide bf16 matmul speed (AMX, AVX-512 BF16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def machine_kind(accelerator: str = "cpu") -> str:
    """A short name for results that differ by machine: ``cpu-amx``, ``cpu-avx512bf16``, ``cpu-avx2``, ``cpu``,
    ``cuda``.

    The CPUs this project meets differ several-fold per step (AMX, AVX512-BF16, and AVX2 without native
    bf16, where training runs in fp32), so their results are kept apart instead of one overwriting another.
    The kind is what torch computes with: oneDNN's bf16 support and ATen's vector ISA, which honour
    ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` (an AVX2 CPU can be emulated on a newer one).
    """
    if accelerator == "cuda":
        return "cuda"
    from sft_lightning.models.precision import cpu_flags, cpu_kind, probe_cpu

    return cpu_kind(probe_cpu(), cpu_flags())


def emulated_isa() -> dict[str, str]:
    """The environment variables that limit the instruction sets torch uses (recorded with every result)."""
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    return {name: os.environ[name] for name in names if name in os.environ}


def cpu_in_words(machine: dict[str, Any]) -> str:
    """The CPU of a result header: model, cores, flags, and the instruction-set limits it ran under, if any."""
    flags = ", ".join(machine.get("cpu_flags") or []) or "no AMX/AVX-512"
    limits = machine.get("isa_limits") or {}
    limited = ""
    if limits:
        env = " ".join(f"{k}={v}" for k, v in sorted(limits.items()))
        limited = f"; torch limited to {limits.get('ATEN_CPU_CAPABILITY', 'a lower ISA').upper()} by `{env}`"
    return f"{machine['cpu_model']} ({machine['cpu_count']} cores, {flags}{limited})"


def shown(text: str | Path) -> str:
    """A path or a command line as a results file records it: relative to the repository, so that no result names
    the directory of the machine it was measured on."""
    return str(text).replace(f"{ROOT}/", "")


def result_path(name: str, accelerator: str = "cpu") -> Path:
    """``benchmarks/results/<name>-<machine kind>.json``: results of different machines never overwrite each other."""
    return RESULTS_DIR / f"{name}-{machine_kind(accelerator)}.json"


def machine_description(accelerator: str = "cpu") -> dict[str, Any]:
    import lightning
    import peft
    import transformers

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags_of_interest(),
        "isa_limits": emulated_isa(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_gb": _total_memory_gb(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerator": accelerator,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if accelerator == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _total_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


# -------------------------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory since the process started or since the last :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; never reset
    except (ImportError, OSError):
        return None


def reset_peak_gpu() -> None:
    """Reset the CUDA peak-memory counter (nothing on a CPU-only machine)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory allocated by tensors since the last :func:`reset_peak_gpu`; ``None`` without CUDA."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def process_peak_rss_mb() -> float | None:
    """Peak resident memory over the whole life of this process (``ru_maxrss``; never reset)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None


# --------------------------------------------------------------------------------------------- FLOPs
FLOP_FORMULA = (
    "useful FLOPs per step = 4*N_body*T + 4*N_head*S + 6*N_lora*T, where T = non-padding tokens, "
    "S = supervised (loss) positions, N_body = frozen parameters of the decoder layers (no embedding), "
    "N_head = LM head (vocab x hidden), N_lora = trainable LoRA parameters. 4 = 2 (forward) + 2 "
    "(backward: activation gradients only, the frozen weights get no weight gradient); LoRA weights get "
    "both, hence 6. The head counts only where a loss is computed; padding counts nowhere; attention "
    "scores (<1% at ~30-token sequences) are left out. Same formula for every arm, so padded work is "
    "not 'useful'."
)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``n_body``, ``n_head``, ``n_embedding``, ``n_lora`` (trainable) of a (peft-wrapped) causal LM."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    embedding = causal_lm.get_input_embeddings()
    head_ids = {id(p) for p in head.parameters()}
    embedding_ids = {id(p) for p in embedding.parameters()}
    n_body = n_lora = 0
    for p in model.parameters():
        if p.requires_grad:
            n_lora += p.numel()
        elif id(p) not in head_ids and id(p) not in embedding_ids:
            n_body += p.numel()
    return {
        "n_body": n_body,
        "n_head": sum(p.numel() for p in head.parameters()),
        "n_embedding": sum(p.numel() for p in embedding.parameters()),
        "n_lora": n_lora,
        "tied_embeddings": head_ids == embedding_ids,
    }


def useful_flops(counts: dict[str, int], tokens: int, supervised: int) -> float:
    return 4.0 * counts["n_body"] * tokens + 4.0 * counts["n_head"] * supervised + 6.0 * counts["n_lora"] * tokens


# -------------------------------------------------------------------------------------------- batches
class CountingCollator:
    """Wraps a collate function and records, per batch in collation order, the non-padding tokens,
    the supervised positions and the padded shape. With ``num_workers=0`` the k-th collated batch is
    the k-th one trained on, whatever the loader prefetches."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.tokens: list[int] = []
        self.supervised: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, examples):
        batch = self.collate(examples)
        mask, labels = batch["attention_mask"], batch["labels"]
        self.tokens.append(int(mask.sum()))
        self.supervised.append(int((labels[:, 1:] != -100).sum()))
        self.shapes.append((int(mask.shape[0]), int(mask.shape[1])))
        return batch


# ----------------------------------------------------------------------------------------- statistics
def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def same_batch_ratio(with_s: list[float], without_s: list[float]) -> float:
    """Median over steps of step j's time in one run over step j's time in the other (the same batch)."""
    if len(with_s) != len(without_s) or not with_s:
        raise ValueError(f"runs of different lengths: {len(with_s)} vs {len(without_s)} steps")
    return statistics.median(a / b for a, b in zip(with_s, without_s))


# ------------------------------------------------------------------------------------------- results
def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def quiet() -> None:
    """Silence the per-run banners of Lightning/transformers in benchmark processes."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import lightning.pytorch  # noqa: F401  - it sets its loggers to INFO when imported: import first, then lower

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
