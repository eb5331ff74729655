"""``sft-lightning ask "How many feet are in 3 m?" --adapter PATH``: answers from a trained run, without a Trainer.

The answer read is printed beside the raw generated text, so a wrong answer shows whether the format or the arithmetic failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from sft_lightning.data.records import DataError
from sft_lightning.evaluation.answering import answer_precision, answer_questions, find_trained, load_trained, run_precision
from sft_lightning.evaluation.predict import Prediction, show_read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-lightning ask",
        description="Answer questions with a fine-tuned model; prints the parsed number and the raw output.",
    )
    parser.add_argument("questions", nargs="+", metavar="QUESTION", help='e.g. "How many feet are in 3 m?"')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="exported adapter directory (runs/<name>/version_N/adapter)")
    source.add_argument("--checkpoint", help="Lightning checkpoint (runs/<name>/version_N/checkpoints/last.ckpt)")
    source.add_argument("--run", help="run directory (runs/<name>/version_N): its adapter, else its last checkpoint")
    parser.add_argument("--model", help="base model, if it cannot be read from the run (embedded, tiny-random, a path)")
    parser.add_argument("--cache-dir", help="model cache directory (default ~/.cache/sft-lightning)")
    parser.add_argument("--max-new-tokens", type=int, help="generation budget (default: the run's model.max_new_tokens)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    return parser


def main(argv: Sequence[str], stream: TextIO | None = None) -> None:
    """Parse, load, answer, print. Expected failures raise ModelLoadError/DataError for cli.main."""
    args = build_parser().parse_args(list(argv))
    questions = [q.strip() for q in args.questions]
    if not all(questions):
        raise DataError("ask got an empty question. Fix: pass the question in quotes, e.g. \"How many feet are in 3 m?\".")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise DataError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    _check_device(args.device)
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise DataError(f"--cache-dir {args.cache_dir} is not a directory. Fix: pass a directory (it is created if missing).")
    kind, path = next((k, p) for k, p in (("adapter", args.adapter), ("checkpoint", args.checkpoint), ("run", args.run)) if p)
    source = find_trained(path, kind)
    print(f"[sft-lightning] answering with the {source.kind} {source.path}", file=sys.stderr, flush=True)
    precision, note = answer_precision(run_precision(source), args.device)
    if note:
        print(f"[sft-lightning] {note}", file=sys.stderr, flush=True)
    module = load_trained(source, args.model, args.cache_dir, args.max_new_tokens, args.device, precision)
    rows = answer_questions(module, questions, precision=precision)
    print_answers(rows, stream or sys.stdout)


def _check_device(device: str) -> None:
    """``--device`` must name a torch device this machine has."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise DataError(f"--device {device!r} is not a torch device. Fix: use cpu or cuda (cuda:N).") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: this machine has no CUDA device. Fix: use --device cpu.")


def print_answers(rows: Sequence[Prediction], stream: TextIO) -> None:
    """Question, parsed answer and raw output; blocks separated by a blank line."""
    blocks = []
    for row in rows:
        answer = show_read(row.parsed) if row.parsed is not None else "none (no answer in the output: empty, unfinished or no number)"
        blocks.append(f"{'question':<9} {row.question}\n{'answer':<9} {answer}\n{'raw':<9} {row.output!r}")
    print("\n\n".join(blocks), file=stream, flush=True)
