"""The training arms of ``benchmarks.train_throughput``; each runs in its own process (see ``_worker``).

An arm is set up once (data, model, LoRA adapter) and then ``run`` any number of times; every run starts from
the same LoRA weights, with a fresh optimiser and schedule, and returns what its timed steps did.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CountingCollator,
    apply_overrides,
    embedded_settings,
    peak_gpu_mb,
    peak_rss_mb,
    process_peak_rss_mb,
    quiet,
    reset_peak_gpu,
    reset_peak_rss,
    useful_flops,
)

ARMS: dict[str, str] = {
    "sftl": "sft-lightning as `make train` runs it (bf16-mixed, bf16 base, length-grouped dynamic padding, GradientHealth)",
    "sftl_nocb": "sft-lightning without the GradientHealth callback",
    "hf_pad128": "HF Trainer + peft, padded to 128 tokens (fp32 base, the autocast sft-lightning runs: bf16=True or none)",
    "hf_dynamic": "HF Trainer + peft, DataCollatorForSeq2Seq dynamic padding (fp32 base, the autocast sft-lightning runs)",
    "hf_dynamic_bf16": "HF Trainer + peft, dynamic padding, base stored in bf16 like sft-lightning",
}
DEFAULT_ARMS = ["sftl", "sftl_nocb", "hf_pad128", "hf_dynamic", "hf_dynamic_bf16"]
REFERENCE = "sftl"


class _Arm:
    """One arm, living in its own process: set up once, then ``run`` any number of times."""

    def __init__(self, name: str, opts: dict[str, Any]) -> None:
        self.name = name
        self.opts = opts
        self.settings = apply_overrides(embedded_settings(Path(opts["config"])), opts.get("overrides"))
        if opts.get("model"):
            self.settings["model"]["model"] = opts["model"]
            self.settings["data"]["tokenizer"] = opts["model"]
        if opts.get("train_size"):
            self.settings["data"]["train_size"] = opts["train_size"]
        if opts.get("precision"):
            self.settings["trainer"]["precision"] = opts["precision"]
        if opts.get("accelerator"):
            self.settings["trainer"]["accelerator"] = opts["accelerator"]
        from sft_lightning.data.datamodule import SFTDataModule

        self.data_cls = _counting_data_module(SFTDataModule)
        self.data = self.data_cls(**self.settings["data"])
        self.data.setup("fit")

    def info(self) -> dict[str, Any]:
        return {}


def _counting_data_module(base):
    class CountingSFTDataModule(base):
        """SFTDataModule whose training loader records what each batch holds (see CountingCollator)."""

        counter: CountingCollator | None = None

        def train_dataloader(self):
            loader = super().train_dataloader()
            self.counter = CountingCollator(loader.collate_fn)
            loader.collate_fn = self.counter
            return loader

    return CountingSFTDataModule


class LightningArm(_Arm):
    """``sftl`` and ``sftl_nocb``: one process, one loaded (and, with ``model.compile``, compiled) model."""

    def __init__(self, name: str, opts: dict[str, Any]) -> None:
        super().__init__(name, opts)
        import lightning as L
        import torch

        from benchmarks.common import parameter_counts
        from sft_lightning.module import SFTModule

        self.L, self.torch = L, torch
        self.module_kwargs = dict(self.settings["model"], num_logged_samples=0)
        L.seed_everything(self.settings["seed"], verbose=False)
        proto = SFTModule(**self.module_kwargs)
        t0 = time.perf_counter()
        proto.configure_model()
        self.load_s = time.perf_counter() - t0
        self.peft, self.tokenizer = proto.model, proto.tokenizer
        self.initial = {n: p.detach().clone() for n, p in self.peft.named_parameters() if p.requires_grad}
        self.counts = parameter_counts(self.peft)

    def callback_specs(self, variant: str) -> list[dict[str, Any]]:
        """The config's callbacks, without checkpointing (and without GradientHealth for ``sftl_nocb``)."""
        return [
            spec
            for spec in self.settings["callbacks"]
            if not spec["class_path"].endswith("ModelCheckpoint")
            and not (variant == "sftl_nocb" and spec["class_path"].endswith("GradientHealth"))
        ]

    def info(self) -> dict[str, Any]:
        model = self.settings["model"]
        return {
            "load_s": self.load_s,
            "parameters": self.counts,
            "base_dtype": str(next(p.dtype for p in self.peft.parameters() if not p.requires_grad)),
            "precision": self.settings["trainer"].get("precision"),
            "attn_implementation": model.get("attn_implementation") or "transformers default (sdpa)",
            "compile": _compiles(model.get("compile", False), self.settings["trainer"]),
            "callbacks": {v: [spec["class_path"] for spec in self.callback_specs(v)] for v in ("sftl", "sftl_nocb")},
        }

    def fresh_module(self):
        from sft_lightning.module import SFTModule

        module = SFTModule(**self.module_kwargs)
        with self.torch.no_grad():
            for name, p in self.peft.named_parameters():
                if p.requires_grad:
                    p.copy_(self.initial[name])
                    p.grad = None
        module.model, module.tokenizer = self.peft, self.tokenizer  # configure_model() then returns early
        return module

    def run(self, variant: str, warmup: int, steps: int, workdir: Path, extra_callbacks: tuple = ()) -> dict[str, Any]:
        from lightning.pytorch.loggers import CSVLogger

        from benchmarks.common import instantiate

        L = self.L
        clock = LightningClock()
        trainer_kwargs = {
            k: v
            for k, v in self.settings["trainer"].items()
            if k not in {"logger", "default_root_dir", "max_epochs", "enable_checkpointing", "enable_progress_bar"}
        }
        trainer = L.Trainer(
            **trainer_kwargs,
            max_steps=warmup + steps,
            limit_val_batches=0,
            logger=CSVLogger(str(workdir), name=variant),
            enable_checkpointing=False,
            enable_progress_bar=False,
            default_root_dir=str(workdir),
            callbacks=[clock.start, *(instantiate(spec) for spec in self.callback_specs(variant)), *extra_callbacks, clock.end],
        )
        module = self.fresh_module()
        L.seed_everything(self.settings["seed"], verbose=False)
        reset_peak_rss()
        reset_peak_gpu()
        trainer.fit(module, datamodule=self.data)
        peak = peak_rss_mb()
        counter = self.data.counter
        assert counter is not None
        return _summarise(clock, counter, warmup, steps, self.counts, peak, [float(x) for x in clock.losses])


class LightningClock:
    """``start`` goes first in the callback list and ``end`` last: the span covers every callback's hooks."""

    def __init__(self) -> None:
        from lightning.pytorch.callbacks import Callback

        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cpu: list[float] = []
        self.losses: list[Any] = []
        clock = self

        class _Start(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                clock.starts.append(time.perf_counter())

        class _End(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                clock.ends.append(time.perf_counter())
                clock.cpu.append(time.process_time())
                clock.losses.append(outputs["loss"].detach())  # no host sync; read after the run

        self.start, self.end = _Start(), _End()


class HFArm(_Arm):
    def __init__(self, name: str, opts: dict[str, Any]) -> None:
        super().__init__(name, opts)
        import torch
        from peft import LoraConfig, get_peft_model

        from benchmarks.common import parameter_counts
        from sft_lightning.models.anatomy import top_layers
        from sft_lightning.models.loading import load_model, load_tokenizer
        from sft_lightning.module import DEFAULT_TARGET_MODULES

        self.torch = torch
        hp = self.settings["model"]
        self.tokenizer = load_tokenizer(hp["model"], hp.get("cache_dir"))
        dtype = torch.bfloat16 if name.endswith("_bf16") else torch.float32
        torch.manual_seed(self.settings["seed"])
        t0 = time.perf_counter()
        base = load_model(hp["model"], hp.get("cache_dir"), dtype=dtype)
        base.config.use_cache = False  # what training recipes set; no KV cache is built in training forwards
        config = LoraConfig(
            r=hp.get("lora_r", 16),
            lora_alpha=hp.get("lora_alpha", 32),
            lora_dropout=hp.get("lora_dropout", 0.05),
            target_modules=list(hp.get("target_modules") or DEFAULT_TARGET_MODULES),
            # the same adapter shape as sft-lightning's (model.lora_layers), so the arms compare trainers
            layers_to_transform=top_layers(base, hp.get("lora_layers")),
            task_type="CAUSAL_LM",
        )
        self.peft = get_peft_model(base, config)
        self.load_s = time.perf_counter() - t0
        self.initial = {n: p.detach().clone() for n, p in self.peft.named_parameters() if p.requires_grad}
        self.counts = parameter_counts(self.peft)
        self.features = self._features(pad_to=128 if name == "hf_pad128" else None)

    def _features(self, pad_to: int | None) -> list[dict[str, list[int]]]:
        """The recipe's tokenised dataset: input_ids, attention_mask, labels (-100 on the prompt)."""
        pad = self.tokenizer.pad_token_id
        features = []
        for ex in self.data.train_examples:
            ids = list(ex.prompt_ids + ex.answer_ids)
            labels = [-100] * len(ex.prompt_ids) + list(ex.answer_ids)
            mask = [1] * len(ids)
            if pad_to is not None:
                n = pad_to - len(ids)
                ids, labels, mask = ids + [pad] * n, labels + [-100] * n, mask + [0] * n
            features.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
        return features

    def info(self) -> dict[str, Any]:
        return {
            "load_s": self.load_s,
            "parameters": self.counts,
            "base_dtype": str(next(p.dtype for p in self.peft.parameters() if not p.requires_grad)),
            "precision": {"bf16": "bf16=True (autocast)", "fp16": "fp16=True (autocast + GradScaler)", "fp32": "fp32"}[self._mixed()],
            "collator": "default_data_collator (pre-padded to 128)" if self.name == "hf_pad128" else "DataCollatorForSeq2Seq",
        }

    def _mixed(self) -> str:
        """The recipe's autocast for the trainer precision sft-lightning runs: bf16, fp16 or none (fp32)."""
        precision = str(self.settings["trainer"].get("precision", "bf16-mixed"))
        return "fp16" if precision.startswith("16") else "bf16" if precision.startswith("bf16") else "fp32"

    def run(self, variant: str, warmup: int, steps: int, workdir: Path, extra_callbacks: tuple = ()) -> dict[str, Any]:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, default_data_collator
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        torch = self.torch
        with torch.no_grad():
            for name, p in self.peft.named_parameters():
                if p.requires_grad:
                    p.copy_(self.initial[name])
                    p.grad = None
        hp, trainer_cfg = self.settings["model"], self.settings["trainer"]
        cpu = self.opts.get("accelerator", "cpu") == "cpu"
        args = TrainingArguments(
            output_dir=str(workdir / self.name),
            per_device_train_batch_size=self.settings["data"].get("batch_size", 16),
            max_steps=warmup + steps,
            learning_rate=hp.get("learning_rate", 1e-3),
            weight_decay=hp.get("weight_decay", 0.0),
            # whole steps: transformers < 5 accepts only an int here (5 also reads a float in [0, 1) as a ratio)
            warmup_steps=round(hp.get("warmup_ratio", 0.05) * (warmup + steps)),
            lr_scheduler_type="cosine",
            max_grad_norm=trainer_cfg.get("gradient_clip_val") or 0.0,
            bf16=self._mixed() == "bf16",
            fp16=self._mixed() == "fp16",
            use_cpu=cpu,
            logging_steps=trainer_cfg.get("log_every_n_steps", 10),
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=self.settings["seed"],
        )
        if self.name == "hf_pad128":
            collator = CountingCollator(default_data_collator)
        else:
            collator = CountingCollator(
                DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
            )
        clock = HFClock(TrainerCallback)
        trainer = Trainer(
            model=self.peft, args=args, train_dataset=self.features, data_collator=collator, callbacks=[clock, *extra_callbacks]
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        reset_peak_rss()
        reset_peak_gpu()
        trainer.train()
        peak = peak_rss_mb()
        return _summarise(clock, collator, warmup, steps, self.counts, peak, None)


def HFClock(base):  # noqa: N802 - builds a TrainerCallback subclass without importing transformers at module import
    class _Clock(base):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())

    return _Clock()


def _summarise(
    clock: Any,
    counter: CountingCollator,
    warmup: int,
    steps: int,
    counts: dict[str, Any],
    peak_mb: float | None,
    losses: list[float] | None,
) -> dict[str, Any]:
    import os

    import torch

    starts, ends = clock.starts, clock.ends
    n = warmup + steps
    if len(ends) != n or len(starts) != n or len(counter.tokens) < n:
        raise RuntimeError(f"expected {n} timed steps, got {len(starts)}/{len(ends)} (batches collated: {len(counter.tokens)})")
    timed = slice(warmup, n)
    wall = ends[n - 1] - ends[warmup - 1]
    tokens = sum(counter.tokens[timed])
    supervised = sum(counter.supervised[timed])
    padded = sum(b * w for b, w in counter.shapes[timed])
    spans = [e - s for s, e in zip(starts[timed], ends[timed])]
    flops = sum(useful_flops(counts, t, s) for t, s in zip(counter.tokens[timed], counter.supervised[timed]))
    return {
        "timed_steps": steps,
        "warmup_steps": warmup,
        "wall_s": wall,
        "tokens": tokens,
        "supervised_tokens": supervised,
        "padded_tokens": padded,
        "padding_fraction": 1.0 - tokens / padded,
        "tokens_per_s": tokens / wall,
        "examples_per_s": sum(b for b, _ in counter.shapes[timed]) / wall,
        "step_s_median": statistics.median(spans),
        "step_s": spans,  # per timed step: arms that see the same batches can be compared batch by batch
        "step_interval_s_median": statistics.median(ends[i] - ends[i - 1] for i in range(warmup, n)),
        "useful_flops": flops,
        "useful_flops_per_s": flops / wall,
        "peak_rss_mb": peak_mb,
        "peak_gpu_mb": peak_gpu_mb(),  # read right after the run, before anything else allocates
        # process CPU time / (wall x torch threads) over the timed steps: ~1 on a quiet machine, lower when
        # other processes take the cores (then the timings are not worth much)
        "cpu_utilisation": (clock.cpu[n - 1] - clock.cpu[warmup - 1]) / wall / torch.get_num_threads(),
        "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "batch_widths": [w for _, w in counter.shapes[:n]],
        "step_spans_s": [e - s for s, e in zip(starts, ends)],
        "losses": losses,
        "_first_start": starts[0],
        "_last_end": ends[-1],
    }


def worker_main(names: list[str], opts: dict[str, Any], conn) -> None:
    """Process entry: build the arm(s) ``names`` (the sft-lightning variants share one process and model; an HF
    arm has its own), run one discarded priming run per arm (compilation, allocator growth, oneDNN kernel
    selection: one-off costs no timed run should carry), then answer ("run", name, warmup, steps) until ("stop",)."""
    try:
        quiet()
        import torch

        if opts.get("threads"):
            torch.set_num_threads(opts["threads"])
        t0 = time.perf_counter()
        arm = LightningArm(names[0], opts) if names[0].startswith("sftl") else HFArm(names[0], opts)
        info = {**arm.info(), "setup_s": time.perf_counter() - t0}
        conn.send(("ready", info))
        with tempfile.TemporaryDirectory(prefix=f"bench_{names[0]}_") as tmp:
            conn.recv()  # ("prime",): the parent primes one worker at a time, so no two compete for the cores
            t0 = time.perf_counter()
            for name in names:
                # sft-lightning steps are short: prime them longer (the first timed runs after compilation were
                # still ~5% slow with 2 priming steps)
                steps = max(1, opts.get("prime_steps", 2)) * (4 if name.startswith("sftl") else 1)
                arm.run(name, 1, steps, Path(tmp))
            conn.send(("primed", {"priming_s": time.perf_counter() - t0, "setup_peak_rss_mb": process_peak_rss_mb()}))
            while True:
                message = conn.recv()
                if message[0] == "stop":
                    conn.send(("stopped", {"process_peak_rss_mb": process_peak_rss_mb()}))
                    return
                _, name, warmup, steps = message
                t0 = time.perf_counter()
                result = arm.run(name, warmup, steps, Path(tmp))
                t1 = time.perf_counter()
                # what a run costs besides its steps: trainer set-up before the first step, teardown after the last
                result.update(run_s=t1 - t0, before_first_step_s=result.pop("_first_start") - t0, after_last_step_s=t1 - result.pop("_last_end"))
                conn.send(("result", result))
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _compiles(setting: bool | str, trainer: dict[str, Any]) -> bool:
    """Whether ``model.compile`` compiles for this trainer: ``auto`` as ``SFTModule`` resolves it."""
    if setting != "auto":
        return bool(setting)
    from sft_lightning.models.compile import compile_pays

    device = "cuda" if trainer.get("accelerator") == "cuda" else "cpu"
    return compile_pays((str(trainer.get("precision")), device))
