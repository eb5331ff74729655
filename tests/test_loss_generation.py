"""Tests for sft_lightning.loss and sft_lightning.evaluation.generation on the tiny offline Llama.

The loss must equal Hugging Face's own causal-LM loss; greedy decoding of a left-padded batch
must give exactly what ``model.generate`` gives for each prompt on its own.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from sft_lightning.data.batching import IGNORE_INDEX, Example, TrainCollator
from sft_lightning.data.prompt import format_answer, format_prompt
from sft_lightning.evaluation.generation import greedy_generate
from sft_lightning.loss import supervised_loss_sum
from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["How many metres are in 3 miles?", "Convert 5 kg to lb", "hi"]
MAX_NEW = 24




@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _spread_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw the matrices with unit-scale init (and amplified residual-branch outputs): the
    default 0.02 init makes the tiny model repeat one token forever, which would make the
    generation comparisons vacuous. Top-1/top-2 logit gaps stay >= 0.01, far above the
    ~1e-6 differences that padding and batching cause."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 6.0 if ("o_proj" in name or "down_proj" in name) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]) * scale)
    return model


def _lora(model: torch.nn.Module, seed: int = 1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # lora_A is drawn from the global RNG
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    # lora_B starts at zero; give it values so the adapter actually changes the outputs.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return peft_model


@pytest.fixture(scope="module")
def diverse_model():
    return _spread_weights(build_tiny_llama(seed=0), seed=0).eval()


@pytest.fixture(scope="module")
def diverse_peft_model():
    return _lora(_spread_weights(build_tiny_llama(seed=0), seed=0)).eval()


def _train_batch(tokenizer) -> dict[str, torch.Tensor]:
    examples = []
    for question, answer in zip(QUESTIONS, [4828.0, 11.02, -0.5]):
        prompt_ids = tuple(tokenizer(format_prompt(question))["input_ids"])
        answer_ids = tuple(tokenizer(format_answer(answer))["input_ids"]) + (tokenizer.eos_token_id,)
        examples.append(Example(prompt_ids, answer_ids, question, answer))
    batch = TrainCollator(tokenizer.pad_token_id)(examples)
    assert len({len(ex) for ex in examples}) == 3  # really a padded batch
    batch["n_answer_tokens"] = torch.tensor(sum(len(ex.answer_ids) for ex in examples))
    return batch


# --------------------------------------------------------------------------------------------
# supervised_loss_sum
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["plain", "peft"])
def test_loss_matches_hf_loss_on_right_padded_batch(tokenizer, wrap: str) -> None:
    model = _spread_weights(build_tiny_llama(seed=3), seed=3)
    if wrap == "peft":
        model = _lora(model)
    model.eval()
    batch = _train_batch(tokenizer)
    with torch.no_grad():
        loss_sum, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert loss_sum.dim() == 0 and count.dim() == 0
    assert loss_sum.dtype == torch.float32
    assert hf.item() > 0.5  # not a trivially small loss
    assert (loss_sum / count).item() == pytest.approx(hf.item(), rel=1e-5, abs=1e-6)


def test_loss_count_is_number_of_labels_after_shift(tokenizer) -> None:
    model = build_tiny_llama().eval()
    batch = _train_batch(tokenizer)
    with torch.no_grad():
        _, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert count.item() == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert count.item() == batch["n_answer_tokens"].item()  # prompt is never empty, so no label is lost

    # A label in column 0 has no preceding token to predict it from: it is not counted.
    labels = torch.full((1, 5), IGNORE_INDEX)
    labels[0, 0] = 7
    labels[0, 3] = 8
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        loss_sum, count = supervised_loss_sum(model, ids, torch.ones_like(ids), labels)
    assert count.item() == 1
    # ...and the one term is -log p(token 8 | tokens 5, 6, 7).
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, 2].float()
    assert loss_sum.item() == pytest.approx(-torch.log_softmax(logits, -1)[8].item(), rel=1e-5)


def test_loss_sum_is_sum_not_mean(tokenizer) -> None:
    model = build_tiny_llama().eval()
    batch = _train_batch(tokenizer)
    with torch.no_grad():
        total, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        parts = [
            supervised_loss_sum(
                model, batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1], batch["labels"][i : i + 1]
            )
            for i in range(3)
        ]
    assert total.item() == pytest.approx(sum(p[0].item() for p in parts), rel=1e-5)
    assert count.item() == sum(p[1].item() for p in parts)


def test_loss_all_ignored_labels_gives_zero_and_zero_count(tokenizer) -> None:
    model = build_tiny_llama().eval()
    batch = _train_batch(tokenizer)
    labels = torch.full_like(batch["labels"], IGNORE_INDEX)
    loss_sum, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], labels)
    assert count.item() == 0
    assert loss_sum.item() == 0.0
    assert math.isnan((loss_sum / count).item())  # the documented NaN signal


def test_loss_is_fp32_under_bf16_autocast(tokenizer) -> None:
    model = build_tiny_llama().eval()
    batch = _train_batch(tokenizer)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, _ = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert loss_sum.dtype == torch.float32


def test_gradients_flow_only_to_lora_parameters(tokenizer) -> None:
    model = _lora(build_tiny_llama(seed=2))
    model.train()
    batch = _train_batch(tokenizer)
    loss_sum, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    (loss_sum / count).backward()
    lora, frozen = 0, 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            lora += 1
            assert p.requires_grad, name
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            frozen += 1
            assert not p.requires_grad, name
            assert p.grad is None, name
    assert lora == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert frozen > 0


def test_gradients_match_hf_loss_gradients(tokenizer) -> None:
    batch = _train_batch(tokenizer)
    grads = []
    for use_ours in (True, False):
        model = _lora(build_tiny_llama(seed=2))
        if use_ours:
            loss_sum, count = supervised_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss = loss_sum / count
        else:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# greedy_generate
# --------------------------------------------------------------------------------------------


def _prompt_ids(tokenizer) -> list[list[int]]:
    ids = [tokenizer(format_prompt(q))["input_ids"] for q in QUESTIONS]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths
    return ids


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _generate_alone(model, prompt: list[int], eos: int, pad: int, max_new: int = MAX_NEW) -> list[int]:
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    return out[0, len(prompt) :].tolist()


def _expected_batch(alone: list[list[int]], eos: int) -> list[list[int]]:
    width = max(len(a) for a in alone)
    return [a + [eos] * (width - len(a)) for a in alone]


@pytest.fixture(params=["plain", "peft"])
def gen_model(request, diverse_model, diverse_peft_model):
    return diverse_model if request.param == "plain" else diverse_peft_model


def test_greedy_matches_generate_on_each_unpadded_prompt(gen_model, tokenizer) -> None:
    prompts = _prompt_ids(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    alone = [_generate_alone(gen_model, p, eos, pad) for p in prompts]
    # Non-degenerate model: the continuations differ and are not a single repeated token.
    assert len({tuple(a) for a in alone}) == len(alone)
    assert all(len(set(a)) >= 3 for a in alone)
    ids, mask = _left_pad(prompts, pad)
    out = greedy_generate(gen_model, ids, mask, MAX_NEW, eos)
    assert out.dtype == torch.long
    assert out.tolist() == _expected_batch(alone, eos)


def test_greedy_positions_come_from_the_mask_absolute_position_model(tokenizer) -> None:
    # RoPE (Llama) only sees relative positions, so it cannot tell whether padding shifted a
    # row's positions; GPT-2's learned absolute position embeddings can.
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model = _spread_weights(model, seed=0).eval()
    prompts = _prompt_ids(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    alone = [_generate_alone(model, p, eos, pad) for p in prompts]
    assert all(len(set(a)) >= 3 for a in alone)
    ids, mask = _left_pad(prompts, pad)
    assert greedy_generate(model, ids, mask, MAX_NEW, eos).tolist() == _expected_batch(alone, eos)


def _token_ending_one_row_early(alone: list[list[int]]) -> tuple[int, int, int]:
    """(token, row, position): a token that row emits early and no other row ever emits."""
    for row, tokens in enumerate(alone):
        others = {t for r, a in enumerate(alone) if r != row for t in a}
        for pos, t in enumerate(tokens[: MAX_NEW // 2]):
            if pos >= 1 and tokens.index(t) == pos and t not in others:
                return t, row, pos
    raise AssertionError(f"no suitable stand-in EOS in {alone}")


def test_greedy_rows_finished_early_are_eos_padded(gen_model, tokenizer) -> None:
    prompts = _prompt_ids(tokenizer)
    pad = tokenizer.pad_token_id
    free = [_generate_alone(gen_model, p, tokenizer.eos_token_id, pad) for p in prompts]
    # Use a token that one row emits early as the "EOS": that row finishes, the others go on.
    eos, row, pos = _token_ending_one_row_early(free)
    alone = [_generate_alone(gen_model, p, eos, pad) for p in prompts]
    assert len(alone[row]) == pos + 1 < MAX_NEW
    assert all(len(a) == MAX_NEW for r, a in enumerate(alone) if r != row)

    ids, mask = _left_pad(prompts, pad)
    out = greedy_generate(gen_model, ids, mask, MAX_NEW, eos)
    assert out.shape == (len(prompts), MAX_NEW)
    assert out.tolist() == _expected_batch(alone, eos)
    assert out[row, pos:].tolist() == [eos] * (MAX_NEW - pos)  # EOS-padded after finishing
    # The other rows continued exactly as if the finished row had not been in the batch.
    for r in range(len(prompts)):
        if r != row:
            assert out[r].tolist() == free[r]


def test_greedy_stops_when_every_row_has_emitted_eos(diverse_model, tokenizer) -> None:
    prompts = _prompt_ids(tokenizer)[:2]  # two prompts of different lengths
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    free = [_generate_alone(diverse_model, p, eos, pad) for p in prompts]
    # Force EOS for row 0 at decode step 1 and for row 1 at step 3 (step = LM-head call index):
    # generation must stop right after step 3, and row 0 must be EOS-padded after step 1.
    eos_step = {0: 1, 1: 3}
    calls = []
    rows_seen = []

    def force_eos(module, args, output):
        step = len(calls)
        calls.append(step)
        rows_seen.append(output.shape[0])
        active = [0, 1] if output.shape[0] == 2 else [1]  # a finished row leaves the batch
        for row, at in eos_step.items():
            if step == at:
                i = active.index(row)
                output[i, eos] = output[i].max() + 1e3  # the head sees (batch, hidden): last position only
        return output

    ids, mask = _left_pad(prompts, pad)
    hook = diverse_model.lm_head.register_forward_hook(force_eos)
    try:
        out = greedy_generate(diverse_model, ids, mask, MAX_NEW, eos)
    finally:
        hook.remove()
    assert out.shape == (2, 4) and out.shape[1] < MAX_NEW
    assert len(calls) == 4  # no decoding step after the last row finished
    assert rows_seen == [2, 2, 1, 1]  # row 0 left the batch once it had emitted EOS
    assert out[0].tolist() == free[0][:1] + [eos, eos, eos]
    assert out[1].tolist() == free[1][:3] + [eos]


def test_greedy_stops_immediately_when_eos_is_argmax(tokenizer) -> None:
    model = build_tiny_llama().eval()
    eos = tokenizer.eos_token_id
    bias = torch.zeros(len(tokenizer))
    bias[eos] = 1e4  # an LM-head bias that makes EOS the argmax everywhere
    head_hook = model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    calls = []
    call_hook = model.model.register_forward_hook(lambda module, args, output: calls.append(1))  # decoder passes
    try:
        ids, mask = _left_pad(_prompt_ids(tokenizer), tokenizer.pad_token_id)
        out = greedy_generate(model, ids, mask, 50, eos)
    finally:
        head_hook.remove()
        call_hook.remove()
    assert out.tolist() == [[eos], [eos], [eos]]
    assert len(calls) == 1  # the prompt pass only: no decoding step after every row finished


def test_greedy_max_new_tokens_zero_returns_empty(diverse_model, tokenizer) -> None:
    ids, mask = _left_pad(_prompt_ids(tokenizer), tokenizer.pad_token_id)
    out = greedy_generate(diverse_model, ids, mask, 0, tokenizer.eos_token_id)
    assert out.shape == (3, 0)
    assert out.dtype == torch.long


def test_greedy_max_new_tokens_is_respected(diverse_model, tokenizer) -> None:
    prompts = _prompt_ids(tokenizer)
    ids, mask = _left_pad(prompts, tokenizer.pad_token_id)
    full = greedy_generate(diverse_model, ids, mask, MAX_NEW, tokenizer.eos_token_id)
    for n in (1, 5):
        out = greedy_generate(diverse_model, ids, mask, n, tokenizer.eos_token_id)
        assert out.shape == (3, n)
        assert torch.equal(out, full[:, :n])


def test_greedy_does_not_track_gradients_and_leaves_inputs_unchanged(diverse_peft_model, tokenizer) -> None:
    ids, mask = _left_pad(_prompt_ids(tokenizer), tokenizer.pad_token_id)
    ids_before, mask_before = ids.clone(), mask.clone()
    out = greedy_generate(diverse_peft_model, ids, mask, 4, tokenizer.eos_token_id)
    assert not out.requires_grad
    assert torch.equal(ids, ids_before)
    assert torch.equal(mask, mask_before)
