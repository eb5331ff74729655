"""An exported adapter in a plain transformers + peft program: its accuracy without the unit table and calculator
(the model alone), and with them put back through a stopping criterion (what ``sft-lightning`` does in generation).

    python -m benchmarks.plain_transformers runs/embedded/version_0/adapter --questions data/handwritten.jsonl

The base is the de-quantised embedded model that ``sft-lightning`` trained on (``--base`` for another directory).
Generation is ``model.generate`` (greedy; batched for the model alone, one question at a time with the lookup); the only project code used is the unit-conversion
task's completion (the lookup and the calculator) and the answer parser.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from sft_lightning.evaluation.metrics import parse_answer
from sft_lightning.models.loading import resolve_source
from sft_lightning.tasks.unit_conversion.task import UnitConversion

TOLERANCE = 0.05
TRIGGERS = ("×", "+", "-", "=<answer>")  # where the unit-conversion task's completion may take over (a temperature's after + or -)


class EndsWith(StoppingCriteria):
    """Stop where the text generated so far ends with one of ``triggers`` (where the completion may take over)."""

    def __init__(self, tokenizer: AutoTokenizer, prompt_length: int, triggers: tuple[str, ...]) -> None:
        self.tokenizer, self.prompt_length, self.triggers = tokenizer, prompt_length, triggers

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=True)
        return text.endswith(self.triggers)


def answer(model: PeftModel, tokenizer: AutoTokenizer, question: str, task: UnitConversion | None, max_new_tokens: int = 64) -> str:
    """The model's answer to ``question`` in the bare prompt it was trained on; with ``task``, generation stops where
    the task's completion may take over (after ``ft to m: 6×`` the factor and product, after ``=<answer>`` the product)
    and goes on after what it wrote."""
    prompt = f"\n{question.strip()}\n"
    written, used = "", 0
    while used < max_new_tokens:
        ids = tokenizer(prompt + written, return_tensors="pt", add_special_tokens=False)["input_ids"]
        stop = StoppingCriteriaList([EndsWith(tokenizer, ids.shape[1], TRIGGERS)]) if task else None
        out = model.generate(ids, max_new_tokens=max_new_tokens - used, do_sample=False, stopping_criteria=stop,
                             pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1] :]
        used += len(out)
        written += tokenizer.decode(out, skip_special_tokens=True)
        if task is None or len(out) == 0 or out[-1].item() == tokenizer.eos_token_id or not written.endswith(TRIGGERS):
            return written
        rest = task.completion(written)
        if rest is not None:
            written += rest
            if rest.endswith("</answer>"):
                return written
    return written


def answers_alone(model: PeftModel, tokenizer: AutoTokenizer, questions: list[str], batch_size: int = 32, max_new_tokens: int = 64) -> list[str]:
    """The model alone: plain batched greedy ``generate`` on the bare prompts (left-padded)."""
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = []
    for start in range(0, len(questions), batch_size):
        prompts = [f"\n{q.strip()}\n" for q in questions[start : start + batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def score(texts: list[str], records: list[dict]) -> dict[str, float]:
    values = [parse_answer(text) for text in texts]
    correct = sum(v is not None and abs(v - float(r["answer"])) <= TOLERANCE * abs(float(r["answer"])) for v, r in zip(values, records))
    return {"accuracy": correct / len(records), "answer_rate": sum(v is not None for v in values) / len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("--questions", default="data/handwritten.jsonl")
    parser.add_argument("--base", default=None, help="the base model directory (default: the de-quantised embedded model)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the scores as JSON here")
    args = parser.parse_args()
    base = args.base or resolve_source("embedded")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), args.adapter).eval()
    lines = Path(args.questions).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()][: args.limit]
    results = {"questions": args.questions, "n": len(records), "adapter": args.adapter}
    questions = [record["question"] for record in records]
    task = UnitConversion()
    runs = {
        "model_alone": lambda: answers_alone(model, tokenizer, questions),
        "with_lookup_and_calculator": lambda: [answer(model, tokenizer, q, task) for q in questions],
    }
    with torch.inference_mode():
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = {**score(run(), records), "seconds": round(time.perf_counter() - start, 1)}
            print(name, results[name], flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
