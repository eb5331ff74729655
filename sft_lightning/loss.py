"""The training loss: cross-entropy over supervised (answer) tokens only, from fp32 logits, the LM head only where a label is.

Why (cost and half precision): docs/design.md, "Architecture", the loss decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sft_lightning.data.batching import IGNORE_INDEX
from sft_lightning.models.anatomy import causal_lm_parts


def supervised_loss_sum(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of next-token cross-entropy over supervised positions, and how many there were.

    A batch with no supervised tokens returns (0, 0): it contributes nothing to its accumulation
    window (SFTModule normalises by the window's count). The data module rejects records without
    answer tokens, and the gradient-health callback stops a run that meets such a batch anyway.
    """
    logits, targets, supervised = _supervised_logits(model, input_ids, attention_mask, labels)
    return F.cross_entropy(logits, targets, reduction="sum"), supervised.sum()


# Rows per forward of the validation loss (``chunked_loss_sum``); the budget's validation estimate times one such chunk.
LOSS_CHUNK_ROWS = 32


def chunked_loss_sum(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, rows: int = LOSS_CHUNK_ROWS
) -> tuple[Tensor, Tensor]:
    """``supervised_loss_sum`` of a large (validation) batch, ``rows`` rows per forward, each chunk cut to its own
    longest row. The same sum; a forward over a few thousand tokens runs faster per token on a CPU than one over a
    200-row batch, and it is the cost the validation estimate measures."""
    total, count = None, None
    for start in range(0, input_ids.shape[0], rows):
        ids, mask, lab = (t[start : start + rows] for t in (input_ids, attention_mask, labels))
        columns = mask.any(dim=0).nonzero()
        if len(columns):  # drop the padding columns every row of the chunk has
            first, last = int(columns[0]), int(columns[-1]) + 1
            ids, mask, lab = ids[:, first:last], mask[:, first:last], lab[:, first:last]
        loss, n = supervised_loss_sum(model, ids, mask, lab)
        total, count = (loss, n) if total is None else (total + loss, count + n)
    assert total is not None and count is not None, "chunked_loss_sum needs at least one row"
    return total, count


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


class WindowTokenMean:
    """The loss as a mean over the supervised tokens of a whole accumulation window, not per micro-batch.

    A micro-batch's returned loss is its sum over a fixed reference count (the first batch's), which keeps
    magnitudes, and any loss scaler, as usual; once the window is complete its true token count is known
    and the summed gradients are rescaled once (``rescale_gradients``). Micro-batches with different token
    counts are then weighted exactly as one big batch would be. The reference count is saved with a
    checkpoint, so a resumed run rounds exactly like an uninterrupted one.
    """

    def __init__(self) -> None:
        self.reference_tokens: Tensor | None = None
        self._window_tokens: Tensor = torch.zeros((), dtype=torch.long)

    def loss(self, loss_sum: Tensor, n_tokens: Tensor, mean_over_ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """What ``training_step`` returns for one micro-batch; counts its tokens into the window.

        ``mean_over_ranks`` (several processes): the reference count is the ranks' mean, one count for all, since
        the gradients are averaged over ranks before ``rescale_gradients`` multiplies them by it (a count per rank
        would scale the same averaged gradient differently on each rank: DDP replicas would drift apart)."""
        if self.reference_tokens is None:
            reference = n_tokens.detach().clamp(min=1).float()
            self.reference_tokens = mean_over_ranks(reference) if mean_over_ranks is not None else reference
        self._window_tokens = self._window_tokens.to(n_tokens.device) + n_tokens.detach()
        return loss_sum / self.reference_tokens

    def rescale_gradients(
        self, parameters: Iterable[nn.Parameter], micro_batches: int, world_size: int, sum_over_ranks: Callable[[Tensor], Tensor]
    ) -> None:
        """At the end of a window: gradients of the window's token mean (DDP averaged over ranks: count globally)."""
        assert self.reference_tokens is not None, "rescale_gradients before any loss of the window"
        window_tokens = self._window_tokens.float()
        scale = self.reference_tokens * micro_batches
        if world_size > 1:
            window_tokens = sum_over_ranks(window_tokens)
            scale = scale * world_size
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale / window_tokens)
        self._window_tokens = torch.zeros((), dtype=torch.long, device=window_tokens.device)
