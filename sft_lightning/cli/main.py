"""``sft-lightning``: LightningCLI over SFTModule + SFTDataModule, plus the plain argparse commands ``ask`` and ``report``.

An expected failure ends in one ``error: ...`` line (exit 2); an interrupted ``fit`` saves a checkpoint and exits 128 + the signal.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sft_lightning.budget.time_budget import TimeBudget, find_time_budget
from sft_lightning.budget.validation_estimate import wilson_interval
from sft_lightning.cli.checkpoint_io import AtomicCheckpointIO, find_last_checkpoint, read_checkpoint
from sft_lightning.cli.config_paths import resolve_config_paths
from sft_lightning.cli.interrupts import PromptStop, SigintAsSigterm
from sft_lightning.cli.progress import ProgressLines
from sft_lightning.cli.run_files import RunDirError
from sft_lightning.cli.trainer_checks import check_trainer_arguments, trainer_argument_error
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.data.records import DataError
from sft_lightning.errors import ConfigError
from sft_lightning.evaluation.metrics import MAIN_VAL_SET
from sft_lightning.evaluation.predict import PredictionWriter
from sft_lightning.models.loading import ModelLoadError
from sft_lightning.models.precision import choose_precision, probe_cpu, slow_precision_warning
from sft_lightning.module import SFTModule

PLAIN_COMMANDS = ("ask", "report")  # argparse commands, dispatched before LightningCLI


class LoggerUnavailableError(RuntimeError):
    """The configured logger needs a package that is not installed."""


# What a user can cause: bad data, a model that cannot load, a value out of range (ours, Lightning's own
# MisconfigurationException for Trainer and callback arguments), a run stopped by GradientHealth. Anything
# else is unexpected and keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    DataError, ModelLoadError, RunDirError, LoggerUnavailableError, ConfigError, MisconfigurationException,
)
try:  # the callback package is optional for the CLI to start, required for its error types
    from callbacks import GradientHealthConfigError, NonFiniteTrainingError

    EXPECTED_ERRORS += (GradientHealthConfigError, NonFiniteTrainingError)
except ImportError:  # pragma: no cover
    pass


class SFTLightningCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        resolve_config_paths(config)
        check_trainer_arguments(config.get("trainer") or {})
        if config.get("trainer") is not None:
            settle_precision(config["trainer"])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as exc:
            # A constructor's own error about its arguments arrives wrapped in jsonargparse's ValueErrors
            # (for class_path values such as callbacks): report the original, not the wrapper.
            expected = next((e for e in _causes(exc) if isinstance(e, EXPECTED_ERRORS)), None)
            if expected is not None and expected is not exc:
                raise expected from None
            # TensorBoardLogger without tensorboard: Lightning's ModuleNotFoundError arrives wrapped
            # in jsonargparse's ValueErrors, whose text is a page about Union subtypes.
            if not _tensorboard_missing(exc):
                raise
            raise LoggerUnavailableError(
                "trainer.logger TensorBoardLogger needs the tensorboard package, which is not installed. "
                "Fix: pip install 'sft-lightning[tensorboard]' (or pip install tensorboard), "
                "or keep the default CSV logger."
            ) from None

    def _parse_ckpt_path(self) -> None:
        """Say which settings a checkpoint overrides. LightningCLI replaces the parsed ``model.*`` settings with
        the checkpoint's hyper-parameters (its weights only fit those), silently: ``validate --ckpt_path X
        --model.lora_r 8`` would run with X's rank and never mention the 8."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not str(ckpt).startswith(("registry:", "hpc:")):
            try:
                read_checkpoint(ckpt)  # missing, damaged or foreign: one error line now, not torch.load's traceback
            except ModelLoadError as exc:
                raise ModelLoadError(f"--ckpt_path: {exc}") from None
        before = _model_settings(self.config)
        super()._parse_ckpt_path()
        after = _model_settings(self.config)
        changed = {key: (before[key], value) for key, value in after.items() if key in before and before[key] != value}
        if changed:
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            listing = ", ".join(f"model.{key}={new!r} (configured: {old!r})" for key, (old, new) in sorted(changed.items()))
            print(
                f"note: the checkpoint {ckpt} sets the model from the hyper-parameters it was trained with: {listing}."
                " The configured values are ignored (LightningCLI's rule); a different LoRA shape needs a new checkpoint.",
                file=sys.stderr,
                flush=True,
            )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        terminal = sys.stderr.isatty()
        if not terminal:  # a log file or CI: a redrawn bar is one huge line there; print progress lines instead
            kwargs["enable_progress_bar"] = False
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except Exception as exc:  # Lightning refusing one of its own arguments (accelerator, devices, ...)
            reworded = trainer_argument_error(exc)
            if reworded is None:
                raise
            raise reworded from None
        if not terminal and not any(isinstance(cb, ProgressLines) for cb in trainer.callbacks):
            trainer.callbacks.append(ProgressLines())
        if not any(isinstance(cb, PromptStop) for cb in trainer.callbacks):
            # SIGTERM/Ctrl+C: stop within seconds, wherever the run is. First, so that its batch-start check and
            # its loader mark come before other callbacks' work, and its on_exception before any other's.
            trainer.callbacks.insert(0, PromptStop())
        # Every run writes checkpoints atomically, unless the user configured their own CheckpointIO.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # predict keeps its answers: predictions.jsonl in the run directory, plus a table.
        if self.subcommand == "predict" and not any(isinstance(cb, PredictionWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(PredictionWriter())
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """validate/test/predict stopped by SIGTERM or Ctrl+C: one line and exit 128 + the signal (``fit`` says
        more: it has a checkpoint to resume from)."""
        if subcommand == "fit":
            super()._run_subcommand(subcommand)
            return
        with SigintAsSigterm() as sigint:
            try:
                super()._run_subcommand(subcommand)
            except SIGTERMException:
                signum = signal.SIGINT if sigint.received else signal.SIGTERM
                print(f"{subcommand} interrupted by {signum.name}; nothing was written.", file=sys.stderr, flush=True)
                raise SystemExit(128 + signum) from None

    def fit(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, **kwargs: Any) -> None:
        """``trainer.fit`` that finds ``--ckpt_path last`` in earlier run versions and reports interruptions."""
        if kwargs.get("ckpt_path") == "last":
            # Lightning looks only in this run's new version_N directory (see find_last_checkpoint);
            # with nothing found anywhere, "last" stays and Lightning starts fresh with a warning.
            kwargs["ckpt_path"] = find_last_checkpoint(self.trainer) or "last"
            if kwargs["ckpt_path"] != "last":
                print(f"resuming from {kwargs['ckpt_path']}", file=sys.stderr, flush=True)
        with SigintAsSigterm() as sigint:
            try:
                self.trainer.fit(model, datamodule=datamodule, **kwargs)
                _validate_if_owed(self.trainer, model, datamodule)
                _save_final_state(self.trainer)
            except SIGTERMException:  # a SystemExit whose code is 0: make it a failure
                signum = signal.SIGINT if sigint.received else signal.SIGTERM
                callback = self.trainer.checkpoint_callback
                saved = getattr(callback, "last_model_path", "") or "none (no ModelCheckpoint with save_on_exception)"
                print(
                    f"interrupted by {signum.name} at step {self.trainer.global_step}; checkpoint: {saved}. "
                    "Resume with the same command plus --ckpt_path last.",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(128 + signum) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One model name drives both the weights and the tokenizer, so they cannot disagree.
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.cache_dir", "data.cache_dir")
        # --budget.minutes N: a wall-clock budget for fit (sft_lightning.budget.time_budget); null (the default) for none
        parser.add_lightning_class_args(TimeBudget, "budget")

    def after_fit(self) -> None:
        self._print_summary("fit")

    def after_validate(self) -> None:
        self._print_summary("validate")

    def _print_summary(self, stage: str) -> None:
        trainer = self.trainer
        run_dir = trainer.log_dir  # on every rank: it broadcasts from rank 0 under DDP
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        sets = getattr(self.datamodule, "val_sets", {MAIN_VAL_SET: getattr(self.datamodule, "val_records", [])})
        lines = [f"==== sft-lightning {stage} summary ===="]
        generated = getattr(self.datamodule, "generated_val_sets", [])
        lines += _accuracy_lines(metrics, {name: len(records) for name, records in sets.items()}, generated)
        if "val/loss" in metrics:
            lines.append(f"{'val/loss':<16} {metrics['val/loss']:.4f}")
            if not any(key.endswith("/accuracy") for key in metrics):  # ``text`` data: no answer to score
                lines.append(f"{'perplexity':<16} {math.exp(min(metrics['val/loss'], 50.0)):.2f}   "
                             "(text records have no prompt/answer split, so there is no accuracy: loss and perplexity only)")
        lines += getattr(self.datamodule, "notes", [])
        if stage == "fit":
            lines += _left_out_lines(self.datamodule)
        budget = find_time_budget(trainer)
        if stage == "fit" and budget is not None:
            lines += budget.summary_lines()
        if stage == "fit":
            lines.append(f"{'adapter':<16} {self.model.export_dir}")
            best = getattr(trainer.checkpoint_callback, "last_model_path", "") if trainer.checkpoint_callback else ""
            if best:
                lines.append(f"{'last checkpoint':<16} {best}")
        if run_dir:
            lines.append(f"{'run directory':<16} {Path(run_dir)}")
        print("\n".join(lines), flush=True)


def settle_precision(trainer: Any) -> None:
    """Fill in ``trainer.precision`` from the machine where the config leaves it unset, and say so in the run's
    first lines; keep a precision the user set, with a warning where it is much slower on this machine."""
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    facts = probe_cpu() if accelerator == "cpu" else None
    if trainer.get("precision") is None:
        choice = choose_precision(accelerator, facts)
        trainer["precision"] = choice.precision
        print(choice.announcement(), file=sys.stderr, flush=True)
        return
    warning = slow_precision_warning(trainer["precision"], accelerator, facts)
    if warning is not None:
        warnings.warn(warning, stacklevel=1)


def _accuracy_lines(metrics: dict[str, float], sizes: dict[str, int], generated_sets: list[str]) -> list[str]:
    """One line per validation set (accuracy with its 95% interval, answer rate, size), and the sets the task
    generated (``generated_sets``) together, when there are several. The interval says how far a set's accuracy can be trusted, and a budget may have cut the set."""
    lines = []
    for name, size in sizes.items():
        if f"{name}/accuracy" in metrics:
            accuracy, rate = metrics[f"{name}/accuracy"], metrics.get(f"{name}/answer_rate", float("nan"))
            low, high = wilson_interval(accuracy * size, size)
            lines.append(
                f"{name + '/accuracy':<22} {accuracy:.4f}   (95% CI {low:.3f}-{high:.3f})   answer rate {rate:.4f}   {size} questions"
            )
    generated = [name for name in generated_sets if f"{name}/accuracy" in metrics and sizes.get(name)]
    if len(generated) >= 2:
        total = sum(sizes[name] for name in generated)
        accuracy = sum(metrics[f"{name}/accuracy"] * sizes[name] for name in generated) / total
        lines.append(f"{'generated, all':<22} {accuracy:.4f}   ({' + '.join(generated)}, {total} questions)")
    return lines


def _left_out_lines(datamodule: Any, shown: int = 5) -> list[str]:
    """How many training samples a skip list left out, and which (the first ``shown`` named by their records)."""
    left_out = getattr(datamodule, "left_out_ids", None)
    ids = left_out() if callable(left_out) else []
    if not ids:
        return []
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    lines = [f"{'left out':<16} {len(ids)} training samples (skip list), ids {ids[:shown]}{more}"]
    describe = getattr(datamodule, "describe_samples", None)
    lines += [f"{'':<16}   {line}" for line in (describe(ids[:shown]) if callable(describe) else [])]
    return lines


def _validate_if_owed(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
    """Every fit ends with a validation of its last step, so the summary has its accuracy: a fit resumed after its
    training had ended (``TimeBudget``: it trains no step), and one that ``max_steps``/``max_epochs`` ended between
    two validations without a budget (``--budget.minutes null``)."""
    if trainer.interrupted:
        return
    budget = find_time_budget(trainer)
    if budget is not None:
        owed = budget.validation_pending
    else:
        owed = trainer.global_step > 0 and getattr(model, "validated_at_step", trainer.global_step) != trainer.global_step
    if owed:
        trainer.validate(model, datamodule=datamodule, verbose=False)


def _save_final_state(trainer: L.Trainer) -> None:
    """Make ``last.ckpt`` hold the final step. ModelCheckpoint writes it every N steps and, with
    ``save_top_k: 0``, not when a run stops mid-epoch (a TimeBudget's end), so it would lag the
    exported adapter by up to N - 1 steps."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.save_last or trainer.interrupted:
        return
    path = callback.last_model_path or callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST)
    trainer.save_checkpoint(path)
    callback.last_model_path = path


def _model_settings(config: Any) -> dict[str, Any]:
    """The ``model.*`` settings of the parsed config of the current subcommand, as a flat dict."""
    try:
        model = config[config.subcommand]["model"]
        return dict(vars(model)) if not isinstance(model, dict) else dict(model)
    except (KeyError, TypeError, AttributeError):
        return {}


def _tensorboard_missing(exc: BaseException) -> bool:
    """Lightning's "no tensorboard" error, however jsonargparse wrapped it: as the cause (newer versions) or
    only inside the text of its Union error (older ones)."""
    return any(isinstance(e, ModuleNotFoundError) and "tensorboard" in str(e).lower() for e in _causes(exc)) or (
        "Neither `tensorboard` nor `tensorboardX` is available" in str(exc)
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def build_cli(args: list[str] | None = None, run: bool = True) -> SFTLightningCLI:
    """The LightningCLI of ``fit``/``validate``/``test``/``predict`` (``run=False``: parse and build only)."""
    return SFTLightningCLI(
        SFTModule,
        SFTDataModule,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"epilog": "Also: sft-lightning ask --help, sft-lightning report --help"},
        args=args,
        run=run,
    )


def quiet_dependencies() -> None:
    """Hide the dependencies' deprecation notices and tips that bury the progress output of a run.

    Called by the CLI only (library users keep Python's warning settings); warnings raised by
    sft_lightning and callbacks are kept.
    """
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        for module in ("transformers", "torch", "lightning", "pytorch_lightning", "peft", "jsonargparse", "torchmetrics"):
            warnings.filterwarnings("ignore", category=category, module=module)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning on torch >= 2.10
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # data is tokenised up front
    # filters act on the logger that emits a record, not on its parents: name the emitting modules
    drop = _DropMessages(("litlogger", "`weights_only` was not set"))
    for name in (
        "lightning.pytorch.utilities.rank_zero",  # rank_zero_info's logger (the litlogger tip)
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).addFilter(drop)
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()


class _DropMessages(logging.Filter):
    """Drop log records containing any of ``fragments`` (Lightning's advertising tip, a note about its own default)."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _end_distributed_process() -> None:
    """After a multi-process run: every rank waits for the others, the process group is torn down, and the
    process ends without interpreter finalisation. Finalisation can still free a gloo group (the strategy keeps
    a reference past ``destroy_process_group``) whose threads then take the GIL of a dying interpreter and
    abort the process ("terminate called without an active exception", a torch bug) after the run
    saved everything. ``atexit`` handlers (logging, loggers' uploads) still run first."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()  # no rank tears down while another still has work in flight
    torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(args: list[str] | None = None) -> None:
    quiet_dependencies()
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in PLAIN_COMMANDS:
            # imported on demand: report pulls in matplotlib, which fit never needs
            importlib.import_module(f"sft_lightning.cli.{argv[0]}").main(argv[1:])
        else:
            build_cli(args)
            _end_distributed_process()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl+C outside a Trainer's run (loading, ask, report): nothing to save
        print("interrupted by SIGINT", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None


if __name__ == "__main__":
    main()
