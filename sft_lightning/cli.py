"""``sft-lightning``: LightningCLI over SFTModule + SFTDataModule, plus ``ask`` and ``report``.

``fit``/``validate``/``test``/``predict`` are LightningCLI's subcommands (``predict`` writes
``predictions.jsonl`` into the run directory). ``ask`` (answer a question from a trained
adapter or checkpoint) and ``report`` (plot a run) are plain argparse commands dispatched
before LightningCLI: they need no Trainer and no config file.

Expected failures (bad data, a model that cannot be loaded, non-finite training) end in one
``error: ...`` line and exit code 2, not a traceback: the message already says what to do.

Interruption: ``fit`` stopped by SIGTERM or a first Ctrl+C finishes the current optimizer step,
saves a checkpoint (``ModelCheckpoint(save_on_exception=True)`` in the shipped configs) and exits
with 128 + the signal number; ``fit --ckpt_path last`` then continues exactly where it stopped.
"""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sft_lightning.checkpoint_io import AtomicCheckpointIO, find_last_checkpoint
from sft_lightning.data import SFTDataModule
from sft_lightning.interrupts import SigintAsSigterm
from sft_lightning.models import ModelLoadError
from sft_lightning.module import SFTModule
from sft_lightning.predict import PredictionWriter
from sft_lightning.records import DataError
from sft_lightning.run_files import RunDirError

PLAIN_COMMANDS = ("ask", "report")  # argparse commands, dispatched before LightningCLI


class LoggerUnavailableError(RuntimeError):
    """The configured logger needs a package that is not installed."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DataError, ModelLoadError, RunDirError, LoggerUnavailableError)
try:  # the callback package is optional for the CLI to start, required for its error type
    from callbacks import NonFiniteTrainingError

    EXPECTED_ERRORS += (NonFiniteTrainingError,)
except ImportError:  # pragma: no cover
    pass


class SFTLightningCLI(LightningCLI):
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as exc:
            # TensorBoardLogger without tensorboard: Lightning's ModuleNotFoundError arrives wrapped
            # in jsonargparse's ValueErrors, whose text is a page about Union subtypes.
            if not any(isinstance(e, ModuleNotFoundError) and "tensorboard" in str(e).lower() for e in _causes(exc)):
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
        trainer = super().instantiate_trainer(**kwargs)
        # Every run writes checkpoints atomically, unless the user configured their own CheckpointIO.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # predict keeps its answers: predictions.jsonl in the run directory, plus a table.
        if self.subcommand == "predict" and not any(isinstance(cb, PredictionWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(PredictionWriter())
        return trainer

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

    def after_fit(self) -> None:
        self._print_summary("fit")

    def after_validate(self) -> None:
        self._print_summary("validate")

    def _print_summary(self, stage: str) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        lines = [f"==== sft-lightning {stage} summary ===="]
        for key in ("val/accuracy", "val/answer_rate", "val/loss"):
            if key in metrics:
                lines.append(f"{key:<16} {metrics[key]:.4f}")
        n_val = len(getattr(self.datamodule, "val_records", []))
        lines.append(f"{'val questions':<16} {n_val}")
        if stage == "fit":
            lines.append(f"{'adapter':<16} {self.model.export_dir}")
            best = getattr(trainer.checkpoint_callback, "last_model_path", "") if trainer.checkpoint_callback else ""
            if best:
                lines.append(f"{'last checkpoint':<16} {best}")
        if trainer.log_dir:
            lines.append(f"{'run directory':<16} {Path(trainer.log_dir)}")
        print("\n".join(lines), flush=True)


def _model_settings(config: Any) -> dict[str, Any]:
    """The ``model.*`` settings of the parsed config of the current subcommand, as a flat dict."""
    try:
        model = config[config.subcommand]["model"]
        return dict(vars(model)) if not isinstance(model, dict) else dict(model)
    except (KeyError, TypeError, AttributeError):
        return {}


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


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in PLAIN_COMMANDS:
            # imported on demand: report pulls in matplotlib, which fit never needs
            importlib.import_module(f"sft_lightning.{argv[0]}").main(argv[1:])
        else:
            build_cli(args)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
