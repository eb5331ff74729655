"""Gradient accumulation must not change the loss: normalise by the window's token count."""

from __future__ import annotations

import tempfile

import lightning as L
import torch
from torch.utils.data import DataLoader

from sft_lightning.data.batching import Example, TrainCollator
from sft_lightning.module import SFTModule


class GradCapture(L.Callback):
    """The gradients the optimiser is about to apply (after accumulation and rescaling)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _examples() -> list[Example]:
    # Answers of very different lengths, so the two micro-batches carry different token counts
    # (2+3+4+5 = 14 vs 20+25+30+35 = 110 supervised tokens).
    lengths = [2, 3, 4, 5, 20, 25, 30, 35]
    return [
        Example(tuple(range(10, 16 + i)), tuple(range(40, 40 + n)), f"q{i}", 1.0) for i, n in enumerate(lengths)
    ]


def _gradients(batch_size: int, accumulate: int, examples: list[Example] | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = SFTModule(model="tiny-random", lora_r=4, lora_dropout=0.0)
    module.configure_model()
    torch.manual_seed(1)
    for _name, param in module.named_parameters():  # non-zero LoRA B so every LoRA tensor gets a gradient
        if param.requires_grad:
            param.data.normal_(0, 0.05)
    loader = DataLoader(examples or _examples(), batch_size=batch_size, shuffle=False, collate_fn=TrainCollator(pad_token_id=0))
    capture = GradCapture()
    # on_train_end exports the adapter under default_root_dir: keep it out of the working tree.
    with tempfile.TemporaryDirectory(prefix="sft-accumulation-") as workdir:
        trainer = L.Trainer(
            accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, precision="32-true",
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[capture], limit_val_batches=0, default_root_dir=workdir,
        )
        trainer.fit(module, train_dataloaders=loader)
    return capture.grads


def test_accumulated_micro_batches_give_the_full_batch_gradient() -> None:
    full = _gradients(batch_size=8, accumulate=1)
    accumulated = _gradients(batch_size=4, accumulate=2)
    assert full.keys() == accumulated.keys() and len(full) > 0
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-7, msg=name)


def test_gradient_is_the_token_mean_not_the_mean_of_batch_means() -> None:
    # The naive recipe (each micro-batch's own token mean, averaged over the window) weights the
    # 14-token micro-batch like the 110-token one. It must differ clearly from the full-batch
    # gradient, or the test above could not tell the two recipes apart.
    full = _gradients(batch_size=8, accumulate=1)
    first = _gradients(batch_size=4, accumulate=1, examples=_examples()[:4])
    second = _gradients(batch_size=4, accumulate=1, examples=_examples()[4:])
    for name in full:
        naive = (first[name] + second[name]) / 2
        token_weighted = (14 * first[name] + 110 * second[name]) / 124
        torch.testing.assert_close(token_weighted, full[name], rtol=1e-4, atol=1e-7)
        assert (naive - full[name]).abs().max() > 100 * (token_weighted - full[name]).abs().max() + 1e-6
