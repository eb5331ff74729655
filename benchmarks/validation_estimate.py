"""How close the time budget's validation estimate comes to the real validation, on this machine.

    python -m benchmarks.validation_estimate --adapter runs/embedded/version_0/adapter

With ``configs/embedded.yaml``'s data, model and the machine's precision, and a trained adapter (an
untrained model writes answers of other lengths than the final validation sees): the estimate
``SFTModule`` makes before training (``sft_lightning.budget.validation_estimate``), then every validation set
run as ``validation_step`` runs it (loss forward on the main set, generation with the calculator), each
set timed and compared with its prediction. Results in ``benchmarks/results/validation_estimate-<kind>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import EMBEDDED_CONFIG, apply_overrides, embedded_settings, machine_description, result_path, shown, write_json

MODES = {
    "before_training": "rows stop at training answers' lengths (the estimate before the first step)",
    "as_it_answers": "the larger timing batch generated to its own ends (the re-timing near the end, a resumed run)",
}


def measure(adapter: str, config: Path, overrides: list[str] | None) -> dict[str, Any]:
    from sft_lightning.budget.validation_estimate import LARGE_BATCH, Ending, answer_lengths, measure_validation_cost, shape_of, spread
    from sft_lightning.data.datamodule import SFTDataModule
    from sft_lightning.evaluation.metrics import MAIN_VAL_SET
    from sft_lightning.loss import chunked_loss_sum
    from sft_lightning.models.compile import eager
    from sft_lightning.module import SFTModule

    settings = apply_overrides(embedded_settings(config), overrides)
    precision = settings["trainer"]["precision"]
    data = SFTDataModule(**settings["data"])
    data.setup("fit")
    module = SFTModule(**dict(settings["model"], adapter=adapter, compile=False, num_logged_samples=0))
    module.configure_model()
    module.task = data.task  # no Trainer links the two here: without it, generation would run without the calculator
    module.model.eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16") else contextlib.nullcontext()
    max_new = module.hparams.max_new_tokens
    sets = data.val_examples
    prompts = [example for examples in sets.values() for example in examples]
    ending = Ending(module.tokenizer.eos_token_id, module.completion_hook())
    estimates = {}
    for mode in MODES:
        start = time.perf_counter()
        lengths = None
        if mode == "before_training":
            lengths = [min(n, max_new) for n in answer_lengths(spread(data.train_examples, LARGE_BATCH), ending.forced)]
        with torch.no_grad(), autocast, eager(), module._generation_weights():
            cost, lengths = measure_validation_cost(module.model, data.eval_collator(), prompts, lengths, max_new, lambda b: b, ending)
        estimates[mode] = (cost, lengths, time.perf_counter() - start)
    batch_size = data.hparams.eval_batch_size
    collate = data.eval_collator()
    rows = []
    for name, examples in sets.items():
        with_loss = name == MAIN_VAL_SET
        shapes = [shape_of(e) for e in examples]
        predicted = {mode: cost.set_seconds(shapes, lengths, batch_size, with_loss) for mode, (cost, lengths, _) in estimates.items()}
        ordered = sorted(examples, key=lambda e: len(e.prompt_ids))
        start = time.perf_counter()
        for first in range(0, len(ordered), batch_size):
            batch = collate(ordered[first : first + batch_size])
            with torch.no_grad(), autocast, module._generation_weights():
                if with_loss:
                    with eager():
                        chunked_loss_sum(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                module.generate_texts(batch["prompt_ids"], batch["prompt_mask"])
        real = time.perf_counter() - start
        rows.append({"set": name, "questions": len(examples), "real_s": real, "predicted_s": predicted,
                     "ratio": {mode: seconds / real for mode, seconds in predicted.items()}})
        print(f"{name:<12} {len(examples):>4} questions: real {real:6.1f} s; predicted "
              + ", ".join(f"{mode} {seconds:6.1f} s ({seconds / real:.2f})" for mode, seconds in predicted.items()), flush=True)
    total_real = sum(r["real_s"] for r in rows)
    summary = {}
    for mode, (cost, _, took) in estimates.items():
        total = sum(r["predicted_s"][mode] for r in rows)
        summary[mode] = {"about": MODES[mode], "estimate_s": took, "cost_model": vars(cost), "predicted_s": total, "ratio": total / total_real}
        print(f"{'all':<12} {mode}: estimate took {took:.1f} s, predicted {total:.1f} s, real {total_real:.1f} s ({total / total_real:.2f})",
              flush=True)
    return {
        "machine": {**machine_description("cpu"), "precision": precision},
        "adapter": shown(adapter),
        "sets": rows,
        "real_s": total_real,
        "estimates": summary,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="a trained adapter directory (runs/embedded/version_N/adapter)")
    p.add_argument("--config", type=Path, default=EMBEDDED_CONFIG)
    p.add_argument("--set", action="append", default=None, metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/validation_estimate-<kind>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    result = measure(args.adapter, args.config, args.set)
    print(f"wrote {write_json(args.out or result_path('validation_estimate'), result)}")


if __name__ == "__main__":
    main()
