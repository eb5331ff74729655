"""The prompt format pair (``sft_lightning.data.prompt``): the chat template where the tokenizer has one, the loss on
every assistant turn and nowhere else, and the prompt generated from equal to the prompt trained on."""

from __future__ import annotations

import pytest
from helpers.chat_model import chat_tokenizer

from sft_lightning.data.batching import IGNORE_INDEX, TrainCollator
from sft_lightning.data.prompt import encode_segments, example_segments, format_prompt, prompt_segments, resolve_prompt_format
from sft_lightning.data.records import DataError
from sft_lightning.models.tiny import build_char_tokenizer

TURNS = [("system", "Be terse."), ("user", "Hi"), ("assistant", "Yo"), ("user", "2+2?")]


def test_multi_turn_loss_mask_on_exact_token_positions() -> None:
    tokenizer = chat_tokenizer()
    (ids, trained), = encode_segments(tokenizer, [example_segments(TURNS, "4", "chat", tokenizer)])
    text = tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Yo<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"
    )
    # one character a token: the trained positions are exactly the two assistant replies and their turn ends
    supervised = [tokenizer.decode([i]) for i, t in zip(ids, trained) if t]
    assert supervised == ["Y", "o", "<|im_end|>", "4", "<|im_end|>"]
    first = text.index("Yo")
    positions = [i for i, t in enumerate(trained) if t]
    prefix_tokens = len(tokenizer(text[:first], add_special_tokens=False)["input_ids"])
    assert positions[:3] == [prefix_tokens, prefix_tokens + 1, prefix_tokens + 2]
    assert positions[3:] == [len(ids) - 2, len(ids) - 1]


def test_collated_labels_follow_the_mask() -> None:
    from sft_lightning.data.batching import Example

    tokenizer = chat_tokenizer()
    (ids, trained), = encode_segments(tokenizer, [example_segments(TURNS, "4", "chat", tokenizer)])
    n_prompt = len(ids) - 2
    labels = tuple(i if t else IGNORE_INDEX for i, t in zip(ids[:n_prompt], trained))
    batch = TrainCollator(tokenizer.pad_token_id)([Example(tuple(ids[:n_prompt]), tuple(ids[n_prompt:]), "2+2?", 4.0, 0, labels)])
    expected = [i if t else IGNORE_INDEX for i, t in zip(ids, trained)]
    assert batch["labels"][0].tolist() == expected


@pytest.mark.parametrize("style", ["chat", "bare"])
def test_generation_prompt_is_the_training_prompt(style: str) -> None:
    tokenizer = chat_tokenizer()
    (train_ids, trained), (prompt_ids, _) = encode_segments(
        tokenizer, [example_segments(TURNS, "4", style, tokenizer), prompt_segments(TURNS, style, tokenizer)]
    )
    assert train_ids[: len(prompt_ids)] == prompt_ids
    assert all(trained[len(prompt_ids) :])  # the answer and its EOS only


def test_bare_single_turn_is_todays_format() -> None:
    tokenizer = build_char_tokenizer()
    (ids, trained), = encode_segments(tokenizer, [example_segments([("user", "6 km in m?")], "<answer>6000</answer>", "bare")])
    prompt = tokenizer(format_prompt("6 km in m?"), add_special_tokens=False)["input_ids"]
    answer = tokenizer("<answer>6000</answer>", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids == prompt + answer
    assert trained == [False] * len(prompt) + [True] * len(answer)


def test_format_resolution() -> None:
    assert resolve_prompt_format("auto", chat_tokenizer(), "m") == "chat"
    assert resolve_prompt_format("auto", build_char_tokenizer(), "m") == "bare"
    assert resolve_prompt_format("bare", chat_tokenizer(), "m") == "bare"
    with pytest.raises(DataError, match="has no chat template. Fix: --data.prompt_format bare"):
        resolve_prompt_format("chat", build_char_tokenizer(), "tiny-random")


def test_the_unit_conversion_task_keeps_the_bare_prompt() -> None:
    from sft_lightning.tasks import OwnData, UnitConversion
    from sft_lightning.tasks.flags import prompt_style

    assert prompt_style(UnitConversion(train_size=4, val_size=2), "auto", chat_tokenizer(), "m") == "bare"
    assert prompt_style(UnitConversion(train_size=4, val_size=2), "chat", chat_tokenizer(), "m") == "chat"
    assert prompt_style(OwnData("unused.jsonl"), "auto", chat_tokenizer(), "m") == "chat"


def test_a_template_that_refuses_a_conversation_is_one_error_with_the_fix() -> None:
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(DataError, match=r"refused a conversation with roles \['system', 'user'\]: System role not supported. "
                                        r"Fix: --data.prompt_format bare"):
        prompt_segments([("system", "x"), ("user", "q")], "chat", tokenizer)
