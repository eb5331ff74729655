"""Batched greedy decoding with a KV cache, for validation and answering questions.

Our own ~30 lines instead of ``model.generate`` so the loop is readable and does only what
scoring needs: left-padded prompts, argmax, and a stop as soon as every row has emitted EOS
(short answers finish in ~10 tokens; decoding to max_new_tokens would waste most of the time).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from sft_lightning.loss import causal_lm_parts


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    forced: Callable[[list[int]], list[int] | None] | None = None,
) -> Tensor:
    """New token ids, shape (batch, <= max_new_tokens); rows that finished early are EOS-padded.

    ``input_ids`` must be LEFT-padded: the next token of every row is then at the last column.
    Position ids come from the attention mask, so padding does not shift a row's positions.
    ``forced``, given the tokens a row has generated so far, may return tokens to write next in
    place of the model's own (``sft_lightning.calculator``); they go through the model like any
    other token, so the cache stays consistent.
    """
    body, head = causal_lm_parts(model)
    cache_arg = _cache_argument(body)
    batch = input_ids.shape[0]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_arg: DynamicCache()},
    )
    next_position = position_ids[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    new_tokens: list[Tensor] = []
    pending: list[list[int]] = [[] for _ in range(batch)]  # forced tokens still to write, per row
    history: list[list[int]] = [[] for _ in range(batch)]  # tokens generated so far, per row (for ``forced``)
    for _ in range(max_new_tokens):
        token = next_token(head, out.last_hidden_state)
        if forced is not None:
            token = _apply_forced(token, pending)
        token = torch.where(finished, torch.full_like(token, eos_token_id), token)
        new_tokens.append(token)
        if forced is not None:
            _queue_forced(forced, token, finished | (token == eos_token_id), history, pending)
        finished |= token == eos_token_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = body(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_arg: getattr(out, cache_arg)},
        )
        next_position = next_position + 1
    if not new_tokens:
        return input_ids.new_empty((batch, 0))
    return torch.stack(new_tokens, dim=1)


def _apply_forced(token: Tensor, pending: list[list[int]]) -> Tensor:
    """The model's next tokens, with queued forced tokens in their rows' places."""
    rows = [row for row, queue in enumerate(pending) if queue]
    if not rows:
        return token
    token = token.clone()
    for row in rows:
        token[row] = pending[row].pop(0)
    return token


def _queue_forced(
    forced: Callable[[list[int]], list[int] | None], token: Tensor, done: Tensor, history: list[list[int]], pending: list[list[int]]
) -> None:
    """Append this step's tokens to ``history`` (one device-to-host copy per step, not one per row), then
    ask ``forced`` about every row still generating on its own and queue what it returns."""
    for row, (tok, row_done) in enumerate(zip(token.tolist(), done.tolist())):
        history[row].append(tok)
        if not pending[row] and not row_done:
            tokens = forced(history[row])
            if tokens:
                pending[row].extend(tokens)


def _cache_argument(body: nn.Module) -> str:
    """The KV-cache keyword of this transformers version: ``cache`` from 5.x on (``past_key_values``
    is deprecated there and goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def next_token(head: nn.Module, hidden: Tensor) -> Tensor:
    """Argmax of the LM head at the last position only, on a contiguous (batch, hidden) matrix.

    Not ``model(..., logits_to_keep=1)``: that applies the head to a strided (batch, 1, hidden)
    slice, and for such an input ``torch.matmul`` expands the 576 x 49152 head weight to every
    row and copies it (1.4 G elements for a batch of 50): 3 of the 5 s of a validation batch.
    """
    return head(hidden[:, -1].contiguous()).argmax(dim=-1)
