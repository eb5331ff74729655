"""SFTModule: a Hugging Face causal LM with a LoRA adapter, trained on answer tokens only.

The base model loads in ``configure_model``, after the config and data are validated; checkpoints hold only the LoRA side.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from sft_lightning.budget.schedule import lr_factor
from sft_lightning.budget.throughput import TokenThroughput
from sft_lightning.budget.time_budget import find_time_budget
from sft_lightning.budget.validation_estimate import Ending, plan_final_validation
from sft_lightning.cli.export import export_adapter
from sft_lightning.errors import check, check_directory, finite
from sft_lightning.evaluation.generation import CompletionHook, greedy_generate
from sft_lightning.evaluation.metrics import MAIN_VAL_SET, AnswerMetrics
from sft_lightning.evaluation.predict import Prediction, make_predictions
from sft_lightning.evaluation.scoring import finished_rows, score_outputs
from sft_lightning.evaluation.val_samples import report_val_samples
from sft_lightning.loss import WindowTokenMean, chunked_loss_sum, per_sample_loss, supervised_loss_sum
from sft_lightning.models.anatomy import top_layers
from sft_lightning.models.compile import compile_decoder_layers, compile_pays, eager
from sft_lightning.models.loading import EMBEDDED, ModelLoadError, load_model, load_tokenizer
from sft_lightning.models.merged_lora import merged_lora_weights
from sft_lightning.models.precision import base_dtype_for
from sft_lightning.optim import clip_fused, clip_sharded, full_weights, fused_adamw_ok
from sft_lightning.tasks.base import Task

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SFTModule(L.LightningModule):
    """LoRA supervised fine-tuning with generation-based validation.

    Args:
        model: ``embedded``, ``tiny-random``, a ``.gguf`` file, a local HF directory or a hub id.
        cache_dir: where converted GGUF models are cached (default ``~/.cache/sft-lightning``).
        adapter: an exported peft adapter directory to start from (for ``validate``/further training).
        base_dtype: dtype of the frozen base weights; ``auto``: bf16 under a bf16 precision, else fp32
            (``models.precision.base_dtype_for``). LoRA parameters stay fp32 whatever this is.
        attn_implementation: the attention kernel (None: transformers' default, SDPA); ``eager`` trains faster
            on a CPU with short sequences, where SDPA's flash-attention backward is the most expensive op.
        compile: ``torch.compile`` the decoder layers for training (eager with a warning where no compiler works);
            ``auto`` only where it was measured to pay (``models.compile.compile_pays``: CUDA, bf16 on a CPU).
        lora_r / lora_alpha / lora_dropout / target_modules: the LoRA adapter.
        lora_layers: LoRA only on the top N decoder layers (None: all): backward stops at the lowest adapted
            layer, fewer FLOPs per step (docs/learning.md).
        learning_rate / weight_decay: AdamW.
        warmup_ratio / min_lr_ratio: linear warmup over this share of steps, then cosine decay
            to ``min_lr_ratio * learning_rate``.
        max_new_tokens: generation budget per validation question.
        calculator: let the task's generation hook write what it knows exactly (for unit conversion the table's
            factor and the exact product: ``factor_lookup.py``, ``calculator.py``). False measures the model alone.
        merge_lora_for_generation: fold the LoRA update into a temporary copy of the weights while generating
            (``models.merged_lora``): the same answers up to bf16 rounding, faster; training weights untouched.
        relative_tolerance: accuracy tolerance (0.05 = within 5%).
        num_logged_samples: question/expected/output rows printed after each validation.
        export_dir_name: subdirectory of the run directory the adapter is exported to.
    """

    def __init__(
        self,
        model: str = EMBEDDED,
        cache_dir: str | None = None,
        adapter: str | None = None,
        base_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Literal["eager", "sdpa"] | None = None,
        compile: bool | Literal["auto"] = False,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        target_modules: list[str] | None = None,
        lora_layers: int | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        max_new_tokens: int = 24,
        calculator: bool = True,
        merge_lora_for_generation: bool = True,
        relative_tolerance: float = 0.05,
        num_logged_samples: int = 5,
        export_dir_name: str = "adapter",
    ) -> None:
        super().__init__()
        check(lora_r >= 1, "model.lora_r", lora_r, ">= 1", "use a rank such as 8 or 16")
        check(finite(lora_alpha) and lora_alpha > 0, "model.lora_alpha", lora_alpha, "a number > 0", "use e.g. 2 x lora_r")
        check(finite(lora_dropout) and 0 <= lora_dropout < 1, "model.lora_dropout", lora_dropout, "in [0, 1)")
        check(target_modules is None or (len(target_modules) > 0 and all(isinstance(m, str) and m for m in target_modules)),
              "model.target_modules", target_modules, "a non-empty list of module names (or null for all linear projections)")
        check(lora_layers is None or (isinstance(lora_layers, int) and lora_layers >= 1), "model.lora_layers", lora_layers,
              ">= 1 (or null for every layer)")
        check(finite(learning_rate) and 0 < learning_rate < 1, "model.learning_rate", learning_rate, "in (0, 1)", "use e.g. 0.002 for LoRA")
        check(finite(weight_decay) and weight_decay >= 0, "model.weight_decay", weight_decay, ">= 0")
        check(finite(warmup_ratio) and 0 <= warmup_ratio < 1, "model.warmup_ratio", warmup_ratio, "in [0, 1)")
        check(finite(min_lr_ratio) and 0 <= min_lr_ratio <= 1, "model.min_lr_ratio", min_lr_ratio, "in [0, 1]")
        check(max_new_tokens >= 1, "model.max_new_tokens", max_new_tokens, ">= 1")
        check(finite(relative_tolerance) and relative_tolerance >= 0, "model.relative_tolerance", relative_tolerance, "a number >= 0")
        check(num_logged_samples >= 0, "model.num_logged_samples", num_logged_samples, ">= 0")
        check(bool(export_dir_name) and Path(export_dir_name).name == export_dir_name and export_dir_name not in (".", ".."),
              "model.export_dir_name", export_dir_name, "a plain directory name (no path)")
        if cache_dir is not None:
            check_directory("model.cache_dir", cache_dir)
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"adapter directory {adapter} has no adapter_config.json. Fix: pass the 'adapter' directory "
                "written at the end of `sft-lightning fit` (inside the run directory)."
            )
        self.save_hyperparameters()
        # Checkpoints carry only the trainable parameters, so loading must not demand the base.
        self.strict_loading = False
        self.model: PeftModel | None = None
        self.tokenizer = None
        self.val_loss = MeanMetric()
        # one entry per validation set, created when the set is first met (sets come from the data)
        self.val_metrics = torch.nn.ModuleDict({MAIN_VAL_SET: AnswerMetrics(relative_tolerance)})
        self._samples: list[dict[str, Any]] = []
        self.validated_at_step: int | None = None
        self.task: Task | None = None  # without a data module (``ask``): the run's task, set by ``load_trained``
        self._export_dir: Path | None = None
        self._window_mean = WindowTokenMean()
        self._window_complete = False
        self._throughput = TokenThroughput()

    # ----------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        if hp.base_dtype == "float16":
            warnings.warn(
                "model.base_dtype=float16: the frozen base runs in fp16, so activations and their gradients can "
                "overflow. The LoRA weights stay fp32, but prefer float32 (or bfloat16) for training.",
                stacklevel=2,
            )
        self.tokenizer = load_tokenizer(hp.model, hp.cache_dir)
        base = load_model(hp.model, hp.cache_dir, dtype=_DTYPES[self.resolved_base_dtype()])
        base.config.use_cache = False  # training never uses it; generation passes a cache explicitly
        if hp.attn_implementation is not None:
            base.set_attn_implementation(hp.attn_implementation)
        if hp.adapter is not None:
            self.model = PeftModel.from_pretrained(base, hp.adapter, is_trainable=True)
        else:
            config = LoraConfig(
                r=hp.lora_r,
                lora_alpha=hp.lora_alpha,
                lora_dropout=hp.lora_dropout,
                target_modules=list(hp.target_modules or DEFAULT_TARGET_MODULES),
                layers_to_transform=top_layers(base, hp.get("lora_layers")),
                task_type="CAUSAL_LM",
            )
            # autocast_adapter_dtype (peft's default) keeps LoRA weights fp32 on a half-precision base.
            self.model = get_peft_model(base, config, autocast_adapter_dtype=True)
        for param in self.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        if self._fitting() and (hp.compile is True or (hp.compile == "auto" and compile_pays(self._precision_and_device()))):
            compile_decoder_layers(base)
        # from_pretrained returns eval mode and Lightning does not switch it back, which would
        # silently disable LoRA dropout; Lightning's loops toggle eval/train from here on.
        self.model.train()

    def resolved_base_dtype(self) -> str:
        """``base_dtype``, with ``auto`` resolved from the trainer's precision (fp32 without a trainer)."""
        if self.hparams.base_dtype != "auto":
            return self.hparams.base_dtype
        trainer = self._trainer
        return base_dtype_for(trainer.precision if trainer is not None else None)

    def _precision_and_device(self) -> tuple[str, str]:
        trainer = self._trainer
        if trainer is None:
            return "32-true", "cpu"
        return str(trainer.precision), trainer.strategy.root_device.type

    def _fitting(self) -> bool:
        """True unless a Trainer runs validate/test/predict, which never train (and generate eagerly)."""
        trainer = self._trainer
        return trainer is None or trainer.state.fn in (None, TrainerFn.FITTING)

    def trainable_parameter_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    # -------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_sum, n_tokens = supervised_loss_sum(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        self.log("train/loss", loss_sum / n_tokens, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self._window_complete = self._ends_accumulation_window(batch_idx)
        mean_over_ranks = (lambda t: self.trainer.strategy.reduce(t, reduce_op="mean")) if self.trainer.world_size > 1 else None
        return self._window_mean.loss(loss_sum, n_tokens, mean_over_ranks)  # on_after_backward completes the window's mean

    @torch.no_grad()
    def per_sample_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Each row's mean supervised loss ([B], fp32; NaN for a row with no supervised token).

        Used by GradientHealth to name the samples (``batch["sample_ids"]``) whose loss is non-finite.
        A diagnostic: no autograd graph, run eagerly (no recompilation); train/eval mode and any
        autocast context are the caller's.
        """
        with eager():
            return per_sample_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def on_after_backward(self) -> None:
        if not self._window_complete:
            return
        self._window_mean.rescale_gradients(
            self.parameters(),
            self.trainer.accumulate_grad_batches,
            self.trainer.world_size,
            lambda tokens: self.trainer.strategy.reduce(tokens, reduce_op="sum"),
        )

    def _ends_accumulation_window(self, batch_idx: int) -> bool:
        """Same rule as Lightning's training loop: every N micro-batches, and at the epoch's end."""
        accumulate = self.trainer.accumulate_grad_batches
        total = self.trainer.num_training_batches
        return (batch_idx + 1) % accumulate == 0 or (math.isfinite(total) and batch_idx + 1 >= total)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            self.log("lr", scheduler.get_last_lr()[0], prog_bar=True)
        if isinstance(batch, dict) and "attention_mask" in batch:
            # a device-side sum, never read on the host here: no sync added to the step
            self._throughput.batch_start(batch["attention_mask"].sum())

    # ------------------------------------------------------------------------ throughput
    def on_train_start(self) -> None:
        # Averaged over one logging interval, so each logged value covers the steps since the last.
        self._throughput.resize(max(1, self.trainer.log_every_n_steps * self.trainer.accumulate_grad_batches))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        tokens_per_s = self._throughput.batch_end()
        if tokens_per_s is not None:
            self.log("train/tokens_per_s", tokens_per_s.float(), prog_bar=True, on_step=True, on_epoch=False)

    def on_validation_start(self) -> None:
        self._throughput.reset()  # validation time between two training batches is not training time

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay, fused=self._fused_adamw_ok(params)
        )
        progress = self._schedule_progress()
        warmup, floor = self.hparams.warmup_ratio, self.hparams.min_lr_ratio
        scheduler = LambdaLR(optimizer, lambda step: lr_factor(progress(step), warmup, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_progress(self) -> Callable[[int], float]:
        """How far through training a step is, in [0, 1]: the share of the planned steps (``max_steps`` or
        ``max_epochs``) or, with a ``TimeBudget``, the elapsed share of its time where that is further on, so the
        schedule ends with whichever ends the run."""
        budget = find_time_budget(self._trainer)
        total = self.trainer.estimated_stepping_batches
        if budget is not None:
            if not math.isfinite(total):
                return lambda step: budget.progress
            total = max(1, int(total))
            return lambda step: max(budget.progress, step / total)
        if not math.isfinite(total):
            raise ValueError(
                "the learning-rate schedule needs to know when training ends, and this trainer never stops "
                "(max_epochs -1 and no max_steps). Fix: set --trainer.max_steps or --trainer.max_epochs, or a "
                "wall-clock budget with --budget.minutes N."
            )
        total = max(1, int(total))
        return lambda step: step / total

    def _fused_adamw_ok(self, params: list[Tensor]) -> bool:
        """Whether this trainer's AdamW may be the fused kernel (``sft_lightning.optim.fused_adamw_ok``)."""
        return fused_adamw_ok(self.trainer, params)

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: int | float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Lightning's clipping, except where Lightning refuses to clip: the fused AdamW (``optim.clip_fused``) and
        FSDP by norm (``optim.clip_sharded``: the root's own ``clip_grad_norm_``, over every rank's shard)."""
        if clip_fused(optimizer, gradient_clip_val, gradient_clip_algorithm):
            return
        if not clip_sharded(self.trainer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------------ validation
    @eager()
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._val_set_name(dataloader_idx)
        answers = batch.get("answers") or batch["expected"].tolist()
        with self._generation_weights():  # one LoRA merge serves the loss forward and the generation
            if name == MAIN_VAL_SET:
                # eager: dynamo guards on the grad mode, so a compiled training graph would be compiled again for
                # no-grad at the final validation, for the few forwards of one validation
                with eager():
                    loss_sum, n_tokens = chunked_loss_sum(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                self.val_loss.update(loss_sum / n_tokens, weight=n_tokens)
            if all(answer is None for answer in answers):
                return  # ``text`` data: no question to answer, scored by its loss only
            texts, finished = self.generate_outputs(batch["prompt_ids"], batch["prompt_mask"])  # (nested merge: a no-op)
        scored = score_outputs(self.task_in_use(), texts, finished, answers, self.hparams.relative_tolerance)
        if name not in self.val_metrics:
            self.val_metrics[name] = AnswerMetrics(self.hparams.relative_tolerance).to(self.device)
        self.val_metrics[name].update_rows(scored.correct, scored.answered)
        if name == MAIN_VAL_SET and len(self._samples) < self.hparams.num_logged_samples:
            for question, expected, text, read in zip(batch["questions"], answers, texts, scored.read):
                self._samples.append({"question": question, "expected": expected, "output": text, "parsed": read})

    def _val_set_name(self, dataloader_idx: int) -> str:
        """The validation set a loader holds: named by the data module (``val_set_names``), else by position."""
        names = getattr(getattr(self._trainer, "datamodule", None), "val_set_names", None) or [MAIN_VAL_SET]
        return names[dataloader_idx] if dataloader_idx < len(names) else f"val{dataloader_idx}"

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_called:
            self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()
        for name, metrics in self.val_metrics.items():
            if not metrics.accuracy.update_called:
                continue
            for key, value in metrics.compute().items():
                self.log(f"{name}/{key}", value, prog_bar=name == MAIN_VAL_SET)
            metrics.reset()
        # only into a run directory (without a logger, log_dir is the current directory); resolved on every rank,
        # since trainer.log_dir broadcasts from rank 0 under DDP
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step  # the CLI validates after fit where this is not the last step
            report_val_samples(self._samples[: self.hparams.num_logged_samples], self.global_step, log_dir)
        self._samples = []

    # --------------------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        """Answers for a batch of questions (``sft-lightning predict``), read and scored like validation."""
        texts, finished = self.generate_outputs(batch["prompt_ids"], batch["prompt_mask"])
        return make_predictions(batch["indices"], batch["questions"], texts, batch["expected"], self.hparams.relative_tolerance, self.task_in_use(), finished)

    def estimate_validation_seconds(self, max_seconds: float | None = None) -> float | None:
        """Seconds the next validation of every set will take, planned to fit ``max_seconds`` (for ``TimeBudget``).

        Generation and the loss forward are timed on small batches (``sft_lightning.budget.validation_estimate``), as
        validation runs them (eval mode, the precision plugin's autocast, merged LoRA). Where the whole
        validation would take longer than ``max_seconds``, the data module's generated sets are cut
        (``sft_lightning.budget.validation_estimate``; never below 100 questions, hand-written and user files whole).
        None without an ``SFTDataModule``-like data module to ask.
        """
        datamodule = getattr(self._trainer, "datamodule", None)
        if self.model is None or self.tokenizer is None or not hasattr(datamodule, "limit_val_sets"):
            return None
        if isinstance(self._trainer.strategy, FSDPStrategy):
            return None  # its weights are sharded outside a forward: not timed (the budget then measures it)
        contexts = (torch.no_grad(), self._trainer.precision_plugin.val_step_context(), eager(), self._generation_weights())
        ending = Ending(self.tokenizer.eos_token_id, self.completion_hook())
        trained = self.global_step > 0  # then timed as it answers now (see validation_timing)
        return plan_final_validation(self.model, datamodule, ending, self.hparams.max_new_tokens, contexts, max_seconds, trained)

    def generate_texts(self, prompt_ids: Tensor, prompt_mask: Tensor) -> list[str]:
        """Greedy completions (special tokens stripped) for left-padded prompts."""
        return self.generate_outputs(prompt_ids, prompt_mask)[0]

    def generate_outputs(self, prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[list[str], list[bool]]:
        """``generate_texts``, and whether each row finished (EOS) before ``max_new_tokens``."""
        assert self.tokenizer is not None
        with eager(), self._generation_weights():
            new_ids = greedy_generate(self.model, prompt_ids, prompt_mask, self.hparams.max_new_tokens, eos := self.tokenizer.eos_token_id, forced=self.completion_hook())
        return self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), finished_rows(new_ids, eos)

    def task_in_use(self) -> Task:
        """The task whose answers are generated and parsed: the data module's (``data.task``), else the one
        ``task`` was set to (``load_trained`` sets the run's), else the protocol's defaults (the answer tag)."""
        datamodule = getattr(self._trainer, "datamodule", None)
        return getattr(datamodule, "task", None) or self.task or Task()

    def completion_hook(self) -> CompletionHook | None:
        """Generation's forced-continuation hook: the task's ``completion`` (the unit-conversion task's calculator)
        while ``model.calculator`` is on and the task has one; None otherwise."""
        task = self.task_in_use()
        if not self.hparams.calculator or not task.has_completion:
            return None
        tokenizer = self.tokenizer
        return CompletionHook(
            task.completion,
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            eos_token_id=tokenizer.eos_token_id,
            trigger=task.completion_trigger,
        )

    def _generation_weights(self) -> contextlib.AbstractContextManager:
        """LoRA folded into the weights while generating (and computing the validation loss), unless
        ``merge_lora_for_generation`` is off. Nested uses are no-ops: the outer one has merged already."""
        # not under FSDP: its flat parameters own the weights' storage, and a swapped weight would be written back
        merge = self.hparams.merge_lora_for_generation and not isinstance(getattr(self._trainer, "strategy", None), FSDPStrategy)
        return merged_lora_weights(self.model) if merge else contextlib.nullcontext()

    # ------------------------------------------------------------------ checkpoint/export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_parameter_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if self._window_mean.reference_tokens is not None:  # a resumed run rounds like an uninterrupted one
            checkpoint["sft_reference_tokens"] = float(self._window_mean.reference_tokens)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "sft_reference_tokens" in checkpoint:
            self._window_mean.reference_tokens = torch.tensor(checkpoint["sft_reference_tokens"], device=self.device)
        missing = self.trainable_parameter_names() - set(checkpoint.get("state_dict", {}))
        if self.model is not None and missing:
            raise ModelLoadError(
                f"checkpoint does not match this model's LoRA adapter: {len(missing)} trainable tensors are missing "
                f"(e.g. {sorted(missing)[0]}). Fix: use the same model.* settings (lora_r, target_modules, model) "
                "as the run that wrote the checkpoint."
            )

    def on_train_end(self) -> None:
        out_dir = self.export_dir  # on every rank: trainer.log_dir broadcasts from rank 0 under DDP
        with full_weights(self.trainer):  # FSDP: every rank gathers the weights (a collective), rank 0 writes
            if self.trainer.is_global_zero and self.model is not None:
                rank_zero_info(f"adapter exported to {export_adapter(self.model, self.tokenizer, out_dir)}")

    @property
    def export_dir(self) -> Path:
        """``<run directory>/<export_dir_name>``, resolved once (then rank 0 alone may ask again, e.g. the summary)."""
        if self._export_dir is None:
            self._export_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / self.hparams.export_dir_name
        return self._export_dir
