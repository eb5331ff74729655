"""``sft-lightning``: LightningCLI over SFTModule + SFTDataModule.

Expected failures (bad data, a model that cannot be loaded, non-finite training) end in one
``error: ...`` line and exit code 2, not a traceback: the message already says what to do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sft_lightning.data import SFTDataModule
from sft_lightning.models import ModelLoadError
from sft_lightning.module import SFTModule
from sft_lightning.records import DataError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DataError, ModelLoadError)
try:  # the callback package is optional for the CLI to start, required for its error type
    from callbacks import NonFiniteTrainingError

    EXPECTED_ERRORS += (NonFiniteTrainingError,)
except ImportError:  # pragma: no cover
    pass


class SFTLightningCLI(LightningCLI):
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


def main(args: list[str] | None = None) -> None:
    try:
        SFTLightningCLI(
            SFTModule,
            SFTDataModule,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
        )
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
