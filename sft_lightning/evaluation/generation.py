"""Batched greedy decoding with a KV cache, for validation and answering questions.

Our own loop rather than ``model.generate``: it does only what scoring needs (docs/design.md, "Generation").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from sft_lightning.models.anatomy import causal_lm_parts


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    forced: Callable[[list[int]], list[int] | None] | None = None,
    stop_lengths: list[int] | None = None,
) -> Tensor:
    """New token ids, shape (batch, <= max_new_tokens); rows that finished early are EOS-padded.

    ``input_ids`` must be LEFT-padded; position ids come from the attention mask. ``forced`` (a ``CompletionHook``,
    e.g. the calculator), given a row's tokens so far, may return tokens to write in place of the model's own.
    ``stop_lengths`` ends each row after that many tokens whatever it generates (to time a batch as a trained model
    would run it). Rows leave the batch (and the KV cache) as soon as they finish.
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
    limits = [max_new_tokens] * batch if stop_lengths is None else [min(max_new_tokens, max(1, n)) for n in stop_lengths]
    rows = list(range(batch))  # the original row of each row still generating
    generated: list[list[int]] = [[] for _ in range(batch)]  # per original row
    pending: list[list[int]] = [[] for _ in range(batch)]  # forced tokens still to write, per original row
    for _ in range(max_new_tokens):
        token = next_token(head, out.last_hidden_state)
        if forced is not None:
            token = _apply_forced(token, [pending[r] for r in rows])
        keep = _record_step(token.tolist(), rows, generated, pending, eos_token_id, forced, limits)  # the step's one host copy
        if not keep:
            break
        cache = getattr(out, cache_arg)
        if len(keep) < len(rows):  # drop the finished rows from everything the next step reads
            index = torch.tensor(keep, device=token.device)
            cache.batch_select_indices(index)
            token, attention_mask, next_position = token[index], attention_mask[index], next_position[index]
            rows = [rows[i] for i in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        out = body(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_arg: cache},
        )
        next_position = next_position + 1
    return _eos_padded(generated, max_new_tokens, eos_token_id, input_ids)


def _record_step(
    tokens: list[int],
    rows: list[int],
    generated: list[list[int]],
    pending: list[list[int]],
    eos_token_id: int,
    forced: Callable[[list[int]], list[int] | None] | None,
    limits: list[int],
) -> list[int]:
    """Append this step's token to each active row (and a known ending, if ``forced`` gives one); return the
    positions, among the active rows, of those that go on."""
    keep = []
    for i, (row, tok) in enumerate(zip(rows, tokens)):
        generated[row].append(tok)
        done = tok == eos_token_id or len(generated[row]) >= limits[row]
        if not done and forced is not None and not pending[row]:
            more = forced(generated[row])
            if more and more[-1] == eos_token_id:
                generated[row].extend(more)  # the row's whole remaining output: no step can change it
                done = True
            elif more:
                pending[row].extend(more)
        if not done:
            keep.append(i)
    return keep


def _eos_padded(generated: list[list[int]], limit: int, eos_token_id: int, like: Tensor) -> Tensor:
    """Rows cut to ``limit`` tokens and EOS-padded to the longest: the (batch, steps) tensor callers decode."""
    rows = [tokens[:limit] for tokens in generated]
    width = max((len(tokens) for tokens in rows), default=0)
    out = like.new_full((len(rows), width), eos_token_id)
    for i, tokens in enumerate(rows):
        if tokens:
            out[i, : len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
    return out


def _apply_forced(token: Tensor, pending: list[list[int]]) -> Tensor:
    """The model's next tokens, with queued forced tokens in their rows' places."""
    rows = [row for row, queue in enumerate(pending) if queue]
    if not rows:
        return token
    token = token.clone()
    for row in rows:
        token[row] = pending[row].pop(0)
    return token


def _cache_argument(body: nn.Module) -> str:
    """The KV-cache keyword of this transformers version: ``cache`` from 5.x on (``past_key_values``
    is deprecated there and goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def next_token(head: nn.Module, hidden: Tensor) -> Tensor:
    """Argmax of the LM head at the last position only, on a contiguous (batch, hidden) matrix.

    Not ``model(..., logits_to_keep=1)``: that applies the head to a strided (batch, 1, hidden)
    slice, and for such an input ``torch.matmul`` expands the 576 x 49152 head weight to every
    row and copies it, most of a validation batch's time (docs/performance.md, the profiles).
    """
    return head(hidden[:, -1].contiguous()).max(dim=-1).indices


class CompletionHook:
    """``greedy_generate``'s ``forced`` hook for a task's ``completion``: the text a row has so far (decoded with
    ``decode``) goes to ``completion``; what it returns is encoded with ``encode`` and ended with EOS.

    ``trigger``: when set, only a step whose last token's text ends with it (or with one of them) is decoded in
    full (the calculator's set-up ends with ``>``), so most steps cost one single-token decode.
    """

    def __init__(
        self,
        completion: Callable[[str], str | None],
        decode: Callable[[Sequence[int]], str],
        encode: Callable[[str], list[int]],
        eos_token_id: int,
        trigger: str | tuple[str, ...] | None = None,
    ) -> None:
        self.completion = completion
        self.decode = decode
        self.encode = encode
        self.eos_token_id = eos_token_id
        self.trigger = trigger

    def __call__(self, generated: Sequence[int]) -> list[int] | None:
        if not generated or (self.trigger and not self.decode(generated[-1:]).endswith(self.trigger)):
            return None
        rest = self.completion(self.decode(generated))
        return None if rest is None else [*self.encode(rest), self.eos_token_id]
