"""The training loss: cross-entropy over supervised (answer) tokens only, in fp32.

Two things make it cheaper and safer than ``model(..., labels=...)``:
- the LM head (576 x 49152 for SmolLM2, ~20% of the model's FLOPs) runs only on positions
  that have a label, not on the prompt and the padding;
- logits are upcast to fp32 before the softmax, so fp16/bf16 autocast never computes the
  log-sum-exp of a 49k-way distribution in half precision.
It returns the *sum* and the token count; the caller decides how to normalise (per batch, or
per accumulation window), so no normalisation choice is hidden in here. ``per_sample_loss`` is
the same loss kept apart per row, for diagnosing a bad batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sft_lightning.anatomy import causal_lm_parts
from sft_lightning.batching import IGNORE_INDEX


def supervised_loss_sum(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of next-token cross-entropy over supervised positions, and how many there were.

    A batch with no supervised tokens returns (0, 0): it contributes nothing to its accumulation
    window (SFTModule normalises by the window's count). The data module rejects records without
    answer tokens, and the gradient-health callback stops a run that meets such a batch anyway.
    """
    logits, targets, supervised = _supervised_logits(model, input_ids, attention_mask, labels)
    return F.cross_entropy(logits, targets, reduction="sum"), supervised.sum()


def per_sample_loss(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """Each row's mean next-token cross-entropy over its supervised positions ([B], fp32).

    Same positions and precision as ``supervised_loss_sum``, kept apart per row so that a
    non-finite step can be traced to the samples whose loss is non-finite. A row without a
    supervised token is NaN (0/0), like the batch loss of a batch without one.
    """
    logits, targets, supervised = _supervised_logits(model, input_ids, attention_mask, labels)
    token_losses = F.cross_entropy(logits, targets, reduction="none")
    rows = supervised.nonzero()[:, 0]  # row of each supervised position, in boolean-indexing order
    sums = torch.zeros(supervised.shape[0], dtype=token_losses.dtype, device=token_losses.device)
    return sums.index_add_(0, rows, token_losses) / supervised.sum(dim=1)


def _supervised_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 logits [N, V] and targets [N] of the N supervised positions, and the mask [B, T-1] that picked them.

    Position t predicts label t+1; the LM head runs only where that label is supervised.
    """
    body, head = causal_lm_parts(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][supervised]).float()
    return logits, targets[supervised], supervised
