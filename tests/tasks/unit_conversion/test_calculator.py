"""The calculator: exact values for worked answers that set a calculation up, nothing else touched."""

from __future__ import annotations

import pytest
import torch

from sft_lightning.evaluation.generation import CompletionHook, greedy_generate
from sft_lightning.evaluation.metrics import parse_answer
from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama
from sft_lightning.tasks.unit_conversion.calculator import completion, evaluate


@pytest.mark.parametrize(
    ("expression", "value"),
    [("6×0.305", 1.83), ("(100-32)/1.8", 68 / 1.8), ("-15×1.8+32", 5.0), ("1,500×0.000621", 0.9315), ("2.5 * 4", 10.0), ("7", 7.0),
     ("2 million×0.001", 2000.0), ("2.5million", 2.5e6)],
)
def test_evaluate_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("expression", ["", "1/0", "2**10", "__import__('os')", "x×2", "abs(-3)", "1e400×10", "(1", "[1]", "million", "a million"])
def test_evaluate_refuses_anything_but_plain_arithmetic(expression: str) -> None:
    assert evaluate(expression) is None


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("ft to m: 6×0.305=<answer>", "1.83</answer>"),
        ("1 ft = 0.305 m; 6×0.305=<answer>", "1.83</answer>"),  # the earlier format
        ("xx to m: 6×0.3=<answer>", "1.8</answer>"),  # a unit the table lacks: the model's own factor
        ("°F to °C: (100-32)/1.8=68/1.8=<answer>", "37.78</answer>"),  # the set-up, not the model's 68
        ("°F to °C: (100-32)/1.8=67/1.8=<answer>", "37.78</answer>"),  # a wrong partial result is not used
        ("°C to K: 41+273.15=<answer>", "314.1</answer>"),
        ("d to ms: 1.25×86400000=<answer>", "108000000</answer>"),
    ],
)
def test_completion_states_the_value_of_the_set_up(text: str, rest: str) -> None:
    assert completion(text) == rest
    assert parse_answer(text + rest) == pytest.approx(float(rest.split("<")[0]))


@pytest.mark.parametrize("text", ["<answer>", "ft to m: 6×0.305=", "I think=<answer>", "6×0.305=<answer>1", "no calculation"])
def test_no_set_up_means_no_completion(text: str) -> None:
    assert completion(text) is None


def test_hook_speaks_in_token_ids() -> None:
    tok = build_char_tokenizer()
    hook = CompletionHook(
        completion,
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        encode=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        eos_token_id=tok.eos_token_id,
        trigger=">",
    )
    ids = tok("1 ft = 0.305 m; 6×0.305=<answer>", add_special_tokens=False)["input_ids"]
    forced = hook(ids)
    assert forced is not None and forced[-1] == tok.eos_token_id
    assert tok.decode(forced[:-1]) == "1.83</answer>"
    assert hook(ids[:-1]) is None and hook([]) is None


def test_forced_tokens_replace_the_models_and_end_the_row() -> None:
    torch.manual_seed(0)
    model = build_tiny_llama(seed=0).eval()
    tok = build_char_tokenizer()
    ids = tok(["\nHow many m in 1 km?\n", "\nhi\n"], add_special_tokens=False, padding=True, return_tensors="pt", padding_side="left")
    plain = greedy_generate(model, ids["input_ids"], ids["attention_mask"], 8, tok.eos_token_id)
    seven, eight = tok.convert_tokens_to_ids(["7", "8"])

    def force_after_two(generated: list[int]) -> list[int] | None:
        return [seven, eight, tok.eos_token_id] if len(generated) == 2 else None

    forced = greedy_generate(model, ids["input_ids"], ids["attention_mask"], 8, tok.eos_token_id, forced=force_after_two)
    assert torch.equal(forced[:, :2], plain[:, :2])  # the model's own tokens until the hook speaks
    assert forced[:, 2:5].tolist() == [[seven, eight, tok.eos_token_id]] * 2
    assert forced.shape[1] == 5  # every row ended with the forced EOS


def test_a_forced_ending_is_written_at_once_and_costs_no_decoding_step() -> None:
    """Forced tokens that end with EOS are the row's whole remaining output: the model is not run on them."""
    torch.manual_seed(0)
    model = build_tiny_llama(seed=0).eval()
    tok = build_char_tokenizer()
    ids = tok(["\nHow many m in 1 km?\n", "\nhi\n"], add_special_tokens=False, padding=True, return_tensors="pt", padding_side="left")
    seven = tok.convert_tokens_to_ids("7")
    calls: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))

    def end_after_two(generated: list[int]) -> list[int] | None:
        return [seven, seven, seven, tok.eos_token_id] if len(generated) == 2 else None

    try:
        out = greedy_generate(model, ids["input_ids"], ids["attention_mask"], 8, tok.eos_token_id, forced=end_after_two)
    finally:
        hook.remove()
    assert out[:, 2:].tolist() == [[seven, seven, seven, tok.eos_token_id]] * 2
    assert calls == [2, 2]  # two decoding steps, then both rows were complete

    cut = greedy_generate(model, ids["input_ids"], ids["attention_mask"], 4, tok.eos_token_id, forced=end_after_two)
    assert cut[:, 2:].tolist() == [[seven, seven]] * 2  # max_new_tokens still bounds the output
