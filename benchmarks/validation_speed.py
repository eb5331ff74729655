"""Validation speed: seconds to generate and score N questions, sft-lightning vs a plain ``model.generate`` loop.

    python -m benchmarks.validation_speed [--questions 1000] [--val-repeats 1] [--adapter auto]

Variants (one process, one model object, the same adapter, ``eval_batch_size`` and ``max_new_tokens`` of
``configs/embedded.yaml``, bf16 autocast as ``bf16-mixed`` runs validation), run in rotating order:

- ``sftl_validate``: ``lightning.Trainer.validate`` on ``SFTModule`` + ``SFTDataModule``: what a validation epoch
  costs in training, i.e. the validation loss forward *and* ``greedy_generate`` -> ``parse_answer`` -> metrics.
- ``sftl_generate``: the same generation and scoring path without the loss forward (the validation dataloader's
  batches -> ``SFTModule.generate_texts`` -> ``parse_answers`` -> metrics): like for like with the plain loop.
- ``sftl_generate_unmerged``: ``sftl_generate`` with ``merge_lora_for_generation`` off, i.e. the LoRA branches
  run beside the base weights at every decoding step (what the package did before folding LoRA into a
  temporary copy of the weights, ``sft_lightning.models.merged_lora``).
- ``hf_generate``: the plain loop: tokenise the prompts of each batch of ``eval_batch_size`` questions (left
  padding), ``model.generate(do_sample=False, max_new_tokens=...)``, decode, ``parse_answers``, metrics.

The adapter: ``--adapter auto`` takes the newest ``runs/embedded/version_*/adapter`` (a trained model stops after
~10 tokens, as in real validation); with none there, a freshly initialised LoRA adapter (= the untuned model,
which rarely emits EOS within ``max_new_tokens``, so every loop runs to the limit). The result file says which.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    apply_overrides,
    embedded_settings,
    machine_description,
    peak_rss_mb,
    quiet,
    reset_peak_rss,
    result_path,
    spread,
    write_json,
)

VARIANTS = ("sftl_validate", "sftl_generate", "hf_generate", "sftl_generate_unmerged")
TARGET_S = 30.0


def find_adapter(spec: str, model: str) -> Path | None:
    if spec == "none" or (spec == "auto" and model != "embedded"):  # runs/embedded holds adapters of the embedded model
        return None
    if spec != "auto":
        path = Path(spec)
        if not (path / "adapter_config.json").is_file():
            raise SystemExit(f"error: --adapter {spec}: no adapter_config.json there")
        return path
    candidates = sorted(ROOT.glob("runs/embedded/version_*/adapter/adapter_config.json"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].parent if candidates else None


class ValidationBench:
    def __init__(self, args: argparse.Namespace) -> None:
        import lightning as L
        import torch

        from sft_lightning.data.datamodule import SFTDataModule
        from sft_lightning.module import SFTModule

        self.torch, self.L = torch, L
        self.args = args
        settings = apply_overrides(embedded_settings(Path(args.config)), getattr(args, "set", None))
        if args.model:
            settings["model"]["model"] = settings["data"]["tokenizer"] = args.model
        self.precision = args.precision or settings["trainer"].get("precision", "32-true")
        self.accelerator = args.accelerator
        # one set of `questions` generated validation questions: every variant times the same work
        data_kwargs = dict(settings["data"], val_size=args.questions, train_size=args.val_train_size, unseen_val_size=0, extra_val_files=None)
        self.batch_size = data_kwargs.get("eval_batch_size", 64)
        self.max_new_tokens = settings["model"].get("max_new_tokens", 24)
        self.adapter = find_adapter(args.adapter, settings["model"]["model"])
        L.seed_everything(settings.get("seed", 0), verbose=False)
        self.data = SFTDataModule(**data_kwargs)
        self.data.setup("validate")
        # compile=False: SFTModule validates and generates eagerly even when training is compiled (model.compile),
        # and the plain loop must not trigger compilation of the shared model either.
        model_kwargs = dict(settings["model"], compile=False, num_logged_samples=0)
        self.module = SFTModule(**dict(model_kwargs, adapter=str(self.adapter) if self.adapter else None))
        self.module.configure_model()
        self.device = torch.device("cuda" if args.accelerator == "cuda" else "cpu")
        self.module.to(self.device)
        self.tokenizer = self.module.tokenizer
        self.left_tokenizer = self._left_padding_copy(self.tokenizer)
        self.questions = [r.question for r in self.data.val_records]
        self.expected = torch.tensor([r.answer for r in self.data.val_records], dtype=torch.float64)
        self.autocast_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision.split("-")[0])

    @staticmethod
    def _left_padding_copy(tokenizer):
        import copy

        left = copy.deepcopy(tokenizer)
        left.padding_side = "left"
        return left

    def _autocast(self):
        import contextlib

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------ the variants
    def sftl_validate(self) -> dict[str, Any]:
        trainer = self.L.Trainer(
            accelerator=self.accelerator,
            devices=1,
            precision=self.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        t0 = time.perf_counter()
        metrics = trainer.validate(self.module, datamodule=self.data, verbose=False)[0]
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "accuracy": metrics["val/accuracy"], "answer_rate": metrics["val/answer_rate"]}

    def sftl_generate(self, merged: bool = True) -> dict[str, Any]:

        from sft_lightning.evaluation.metrics import AnswerAccuracy, AnswerRate, parse_answers

        torch = self.torch
        module = self.module
        module.eval()
        accuracy, rate = AnswerAccuracy(module.hparams.relative_tolerance), AnswerRate()
        outputs: dict[str, float] = {}
        texts_per_batch = []
        t0 = time.perf_counter()
        module.hparams.merge_lora_for_generation = merged
        with torch.no_grad(), self._autocast():
            for batch in self.data.val_dataloader():
                prompt_ids, prompt_mask = batch["prompt_ids"].to(self.device), batch["prompt_mask"].to(self.device)
                texts = module.generate_texts(prompt_ids, prompt_mask)
                preds = parse_answers(texts)
                accuracy.update(preds, batch["expected"])
                rate.update(preds)
                texts_per_batch.append(texts)
                outputs.update(zip(batch["questions"], preds.tolist()))
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "accuracy": float(accuracy.compute()),
            "answer_rate": float(rate.compute()),
            "decode_steps_per_batch": [_decode_steps(texts, self.tokenizer, self.max_new_tokens) for texts in texts_per_batch],
            "preds": outputs,
        }

    def sftl_generate_unmerged(self) -> dict[str, Any]:
        """``sftl_generate`` with the LoRA branches beside the base weights (``merge_lora_for_generation`` off)."""
        try:
            return self.sftl_generate(merged=False)
        finally:
            self.module.hparams.merge_lora_for_generation = True

    def hf_generate(self) -> dict[str, Any]:
        from sft_lightning.data.prompt import format_prompt
        from sft_lightning.evaluation.metrics import AnswerAccuracy, AnswerRate, parse_answers

        torch = self.torch
        model, tok = self.module.model, self.left_tokenizer
        model.eval()
        accuracy, rate = AnswerAccuracy(self.module.hparams.relative_tolerance), AnswerRate()
        outputs: dict[str, float] = {}
        new_tokens = []
        t0 = time.perf_counter()
        with torch.no_grad(), self._autocast():
            for start in range(0, len(self.questions), self.batch_size):
                questions = self.questions[start : start + self.batch_size]
                enc = tok([format_prompt(q) for q in questions], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                out = model.generate(
                    input_ids=enc["input_ids"],  # not **enc: some tokenizers add token_type_ids, which generate refuses
                    attention_mask=enc["attention_mask"],
                    do_sample=False,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    use_cache=True,
                )
                generated = out[:, enc["input_ids"].shape[1] :]
                new_tokens.append(int(generated.shape[1]))
                texts = tok.batch_decode(generated, skip_special_tokens=True)
                preds = parse_answers(texts)
                accuracy.update(preds, self.expected[start : start + self.batch_size])
                rate.update(preds)
                outputs.update(zip(questions, preds.tolist()))
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "accuracy": float(accuracy.compute()),
            "answer_rate": float(rate.compute()),
            "decode_steps_per_batch": new_tokens,
            "preds": outputs,
        }


def _decode_steps(texts: list[str], tokenizer, limit: int) -> int:
    """Longest completion in tokens (+1 for the EOS that stopped it): the decode steps the batch ran (counted
    after the clock stopped)."""
    return min(limit, max((len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts), default=0) + 1)


def measure(args: argparse.Namespace, log=print) -> dict[str, Any]:
    wall0 = time.perf_counter()
    reset_peak_rss()
    bench = ValidationBench(args)
    adapter = str(bench.adapter.relative_to(ROOT)) if bench.adapter and bench.adapter.is_relative_to(ROOT) else (str(bench.adapter) if bench.adapter else None)
    log(f"  {len(bench.questions)} questions, batch {bench.batch_size}, max_new_tokens {bench.max_new_tokens}, adapter {adapter or 'fresh LoRA (untrained)'}")
    import torch

    from benchmarks.train_throughput import BUSY_BELOW, BUSY_NOTE

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    rounds = []
    for r in range(args.val_repeats):
        order = list(VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)])
        runs = {}
        for name in order:
            cpu0, wall0_run = time.process_time(), time.perf_counter()
            runs[name] = getattr(bench, name)()
            runs[name]["cpu_utilisation"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0_run) / threads
            busy = BUSY_NOTE if runs[name]["cpu_utilisation"] < BUSY_BELOW else ""
            log(
                f"  round {r} {name:<14} {runs[name]['seconds']:6.1f} s  accuracy {runs[name]['accuracy']:.3f}"
                f"  answer rate {runs[name]['answer_rate']:.3f}  cpu {runs[name]['cpu_utilisation'] * 100:3.0f}%{busy}"
            )
        rounds.append({"round": r, "order": order, "runs": runs})
    peak = peak_rss_mb()
    seconds = {name: [rd["runs"][name]["seconds"] for rd in rounds] for name in VARIANTS}
    ours_vs_plain = [rd["runs"]["sftl_generate"]["seconds"] / rd["runs"]["hf_generate"]["seconds"] for rd in rounds]
    validate_vs_plain = [rd["runs"]["sftl_validate"]["seconds"] / rd["runs"]["hf_generate"]["seconds"] for rd in rounds]
    last = rounds[-1]["runs"]
    same = [q for q in bench.questions if _same(last["sftl_generate"]["preds"].get(q), last["hf_generate"]["preds"].get(q))]
    merged = [q for q in bench.questions if _same(last["sftl_generate"]["preds"].get(q), last["sftl_generate_unmerged"]["preds"].get(q))]
    unmerged_over_merged = [rd["runs"]["sftl_generate_unmerged"]["seconds"] / rd["runs"]["sftl_generate"]["seconds"] for rd in rounds]
    for rd in rounds:  # the per-question predictions were only needed for the agreement checks
        for run in rd["runs"].values():
            run.pop("preds", None)
    return {
        "benchmark": f"validation speed: generate and score {len(bench.questions)} questions",
        "config": {
            "questions": len(bench.questions),
            "eval_batch_size": bench.batch_size,
            "max_new_tokens": bench.max_new_tokens,
            "precision": bench.precision,
            "adapter": adapter or "fresh LoRA adapter (untrained)",
            "repeats": args.val_repeats,
            "variants": {
                "sftl_validate": "Trainer.validate: val loss forward + greedy_generate + parse + metrics (batches sorted by prompt length)",
                "sftl_generate": "SFTModule.generate_texts + parse + metrics over the validation batches (no loss forward)",
                "sftl_generate_unmerged": "sftl_generate with merge_lora_for_generation off (LoRA branches at every step)",
                "hf_generate": "tokenise (left padding) + model.generate(do_sample=False) + decode + parse + metrics, dataset order",
            },
        },
        "seconds": {name: spread(values) for name, values in seconds.items()},
        "ratio_sftl_generate_over_hf": spread(ours_vs_plain),
        "ratio_sftl_validate_over_hf": spread(validate_vs_plain),
        # "seconds to generate and score": sftl_generate; sftl_validate adds the validation-loss forward
        "meets_target": statistics.median(seconds["sftl_generate"]) < TARGET_S * len(bench.questions) / 1000
        and statistics.median(ours_vs_plain) <= 1.0,
        "target": f"generate + score < {TARGET_S:.0f} s per 1000 questions and no slower than the plain loop",
        "prediction_agreement": len(same) / len(bench.questions),
        "ratio_unmerged_over_merged": spread(unmerged_over_merged),
        "prediction_agreement_merged_vs_unmerged": len(merged) / len(bench.questions),
        "decode_steps_per_batch": {name: last[name]["decode_steps_per_batch"] for name in ("sftl_generate", "hf_generate")},
        "peak_rss_mb": peak,
        "busy_runs": [f"round {rd['round']} {n}" for rd in rounds for n, run in rd["runs"].items() if run["cpu_utilisation"] < BUSY_BELOW],
        "rounds": rounds,
        "wall_s": time.perf_counter() - wall0,
    }


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    if a != a and b != b:  # both NaN: neither parsed
        return True
    return a == b


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--questions", type=int, default=1000, help="validation questions (default 1000)")
    p.add_argument("--val-repeats", dest="val_repeats", type=int, default=1, help="rounds of all variants, order rotated (default 1: the plain loop alone takes ~90 s)")
    p.add_argument("--adapter", default="auto", help="adapter directory, 'auto' (newest runs/embedded/version_*/adapter) or 'none'")
    p.add_argument("--val-train-size", dest="val_train_size", type=int, default=64, help="generator training set size (unused; small keeps generation fast)")


def print_table(result: dict[str, Any], log=print) -> None:
    s = result["seconds"]
    n = result["config"]["questions"]
    for name in VARIANTS:
        log(f"{name:<16} median {s[name]['median']:6.1f} s  (min {s[name]['min']:.1f}, max {s[name]['max']:.1f}) for {n} questions")
    r = result["ratio_sftl_generate_over_hf"]
    log(
        f"sftl_generate / hf_generate: min {r['min']:.2f} median {r['median']:.2f} max {r['max']:.2f};"
        f" predictions agree on {result['prediction_agreement'] * 100:.1f}% of questions; adapter: {result['config']['adapter']}"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.train_throughput import add_common_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    add_common_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/validation_speed-<machine kind>.json)")
    args = p.parse_args(argv)
    quiet()
    result = measure(args)
    result["machine"] = machine_description(args.accelerator)
    args.out = args.out or result_path("validation_speed", getattr(args, "accelerator", "cpu"))
    write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
