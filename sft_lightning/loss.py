"""The training loss: cross-entropy over supervised (answer) tokens only, in fp32.

Two things make it cheaper and safer than ``model(..., labels=...)``:
- the LM head (576 x 49152 for SmolLM2, ~20% of the model's FLOPs) runs only on positions
  that have a label, not on the prompt and the padding;
- logits are upcast to fp32 before the softmax, so fp16/bf16 autocast never computes the
  log-sum-exp of a 49k-way distribution in half precision.
It returns the *sum* and the token count; the caller decides how to normalise (per batch, or
per accumulation window), so no normalisation choice is hidden in here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sft_lightning.batching import IGNORE_INDEX


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder body, LM head) of a Hugging Face causal LM, peft-wrapped or not."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def supervised_loss_sum(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of next-token cross-entropy over supervised positions, and how many there were.

    A batch with no supervised tokens returns (0, 0): it contributes nothing to its accumulation
    window (SFTModule normalises by the window's count). The data module rejects records without
    answer tokens, and the gradient-health callback stops a run that meets such a batch anyway.
    """
    body, head = causal_lm_parts(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][supervised]).float()
    loss_sum = F.cross_entropy(logits, targets[supervised], reduction="sum")
    return loss_sum, supervised.sum()
