"""SFTDataModule: where the question/answer pairs come from and how they become batches.

Records are read and validated in ``__init__`` (no tokenizer, no model: bad input fails in a second), tokenised in ``setup``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler
from transformers import PreTrainedTokenizerBase

from callbacks import read_skip_list
from sft_lightning.cli.config_paths import PROJECT_DIR
from sft_lightning.data.batching import (
    EvalCollator,
    Example,
    LengthGroupedSampler,
    PredictCollator,
    PromptExample,
    ResumableDataLoader,
    TrainCollator,
)
from sft_lightning.data.prompt import PromptFormat, check_template_splits, encode_segments, example_segments, prompt_segments
from sft_lightning.data.records import DataError, QARecord, Question, load_questions, load_records, normalize_question, show_answer
from sft_lightning.errors import check, finite
from sft_lightning.evaluation.metrics import MAIN_VAL_SET
from sft_lightning.models.loading import EMBEDDED, load_tokenizer
from sft_lightning.tasks.base import Task
from sft_lightning.tasks.flags import prompt_style, task_from_flags
from sft_lightning.tasks.unit_conversion import UNSEEN_VAL_SET
from sft_lightning.tasks.unit_conversion.conventions import Conventions
from sft_lightning.tasks.unit_conversion.task import UnitConversion

__all__ = ["UNSEEN_VAL_SET", "SFTDataModule"]  # UNSEEN_VAL_SET: importable from here as before


class SFTDataModule(L.LightningDataModule):
    """A task's questions as batches: training, one loader per validation set, and questions to predict.

    What is asked and how answers are read is the task's (``data.task``, ``sft_lightning.tasks``); this module
    tokenises, batches, decontaminates and names the samples of a bad step.

    Args:
        task: the task (``class_path``/``init_args`` in YAML). None: the task the flags below describe, the
            generated unit-conversion task without ``train_file``, ``OwnData`` with it.
        train_file: ``.json`` list of ``[question, answer]`` pairs or ``.jsonl`` with
            ``question``/``answer`` fields. None uses the generator.
        val_file: same formats; None holds out the last ``val_size`` records of ``train_file``
            (or generates a disjoint validation set when using the generator).
        train_size / val_size: generator set sizes (``val_size`` also sets the hold-out size).
        val_fraction: with ``train_file`` and no ``val_file``, hold out this share of its records (bounded to
            1..500, drawn by ``seed``) instead of its last ``val_size``.
        unseen_val_size: questions in the generated ``val_unseen`` set, phrased only with templates and
            unit spellings held out of training (generator only; 0: none).
        answer_format: ``worked`` trains on generated answers written out (``ft to m: 6×0.305=<answer>1.83</answer>``,
            ``worked.py``), ``bare`` on the tag alone; questions from ``train_file`` always train on the bare tag.
        extra_val_files: more validation sets, ``{name: file}`` (same formats as ``val_file``); each
            is scored on its own and logged as ``name/accuracy`` and ``name/answer_rate``.
        allow_conflicting_answers: a file that asks the same question twice with different answers is
            an error naming both records; true trains on both, with a warning.
        seed: generator seed and shuffling seed.
        families / units: restrict the generator (see ``tasks/unit_conversion/generator.py``).
        conventions: what the generator and the unit table take a word whose meaning varies to mean (``ton``,
            ``kilobyte``, ``gallon``, ``calorie``; docs/data.md), e.g. ``--data.conventions.ton short``.
        batch_size / eval_batch_size: training and validation batch sizes.
        max_length: longest prompt+answer in tokens; a longer record is an error, never cut.
        prompt_format: ``chat``: the model's chat template (loss on the assistant's turns only); ``bare``: the question
            between newlines; ``auto``: chat where the tokenizer has a template, except unit conversion (bare).
        significant_digits: digits kept in written answers (relative precision, so 0.000123
            stays 0.000123).
        tokenizer / cache_dir: the model name whose tokenizer to use (linked from
            ``model.model`` by the CLI) and the model cache directory.
        predict_file: questions for ``sft-lightning predict``: ``.txt`` (one per line), ``.json``
            or ``.jsonl`` (answers optional; given answers are scored).
        skip_list: a ``skip_list.json`` of GradientHealth's from an earlier run (or a JSON list of sample ids): those
            training samples are left out, as are the samples it names during this fit (``left_out_ids``).
    """

    def __init__(
        self,
        task: Task | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        train_size: int = 2000,
        val_size: int = 200,
        val_fraction: float | None = None,
        unseen_val_size: int = 0,
        answer_format: Literal["worked", "bare"] = "worked",
        extra_val_files: dict[str, str] | None = None,
        allow_conflicting_answers: bool = False,
        seed: int = 1234,
        families: list[str] | None = None,
        units: dict[str, list[str]] | None = None,
        conventions: Conventions | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_length: int = 128,
        prompt_format: Literal["auto", "chat", "bare"] = "auto",
        significant_digits: int = 4,
        num_workers: int = 0,
        tokenizer: str = EMBEDDED,
        cache_dir: str | None = None,
        predict_file: str | None = None,
        skip_list: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check(value >= 1, f"data.{name}", value, ">= 1")
        check(max_length >= 2, "data.max_length", max_length, ">= 2 tokens", "use e.g. 128")
        check(1 <= significant_digits <= 15, "data.significant_digits", significant_digits, "in [1, 15]", "use 3 or 4")
        check(num_workers >= 0, "data.num_workers", num_workers, ">= 0")
        check(val_fraction is None or (finite(val_fraction) and 0 < val_fraction < 1), "data.val_fraction", val_fraction,
              "in (0, 1) (or null: hold out the last data.val_size records)", "use e.g. 0.1")
        self.save_hyperparameters()
        flags = dict(train_file=train_file, val_file=val_file, train_size=train_size, val_size=val_size, val_fraction=val_fraction,
                     unseen_val_size=unseen_val_size, answer_format=answer_format, families=families, units=units,
                     conventions=conventions)
        self.task = task_from_flags(task, allow_conflicting_answers, **flags)
        data = self.task.load(seed, significant_digits)
        self.train_records, self.val_sets, self._resizable = data.train, data.val_sets, data.resizable
        self._first_index = data.first_index
        self.notes = data.notes  # for the summary (e.g. how a validation set was held out)
        for name, path in (extra_val_files or {}).items():
            if _shipped_unit_set(path) and not isinstance(self.task, UnitConversion):
                rank_zero_info(f"data.extra_val_files.{name}: a unit-conversion set, left out: {type(self.task).__name__} is another task")
                continue
            self.val_sets[_checked_set_name(name, self.val_sets)] = self._load(f"data.extra_val_files.{name}", path)
        if self._resizable:
            # decontaminate generated training data: a generated question that a validation set also asks (short
            # ones like "1 TB to GB" are written the same way by anyone) would score memory, not skill
            self.train_records = _without_questions_in(self.train_records, self.val_sets.values())
        self.given_left_out = _read_skip_list(skip_list) if skip_list else []
        # Read now, like the training data: a bad questions file fails before any model loads.
        self.predict_questions: list[Question] = []
        if predict_file:
            with _about("data.predict_file"):
                self.predict_questions = load_questions(predict_file)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.prompt_style: PromptFormat = "bare"  # resolved with the tokenizer in setup
        self._template_checked = False  # the chat template renders turns one after the other (checked once)
        self.train_examples: list[Example] = []
        self.val_examples: dict[str, list[Example]] = {}
        self.predict_examples: list[PromptExample] = []

    @property
    def val_records(self) -> list[QARecord]:
        """The main validation set (``val``)."""
        return self.val_sets[MAIN_VAL_SET]

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation sets, in the order of ``val_dataloader``'s loaders."""
        return list(self.val_sets)

    @property
    def generated_val_sets(self) -> list[str]:
        """The validation sets the task drew at random (``TaskData.resizable``): a time budget may cut these
        (``limit_val_sets``), never the hand-written set or the user's files."""
        return [name for name in self.val_sets if name in self._resizable]

    def limit_val_sets(self, sizes: dict[str, int]) -> None:
        """Keep the first ``sizes[name]`` questions of each validation set (generated sets are already in
        random order, so the first N are a random sample). Loaders built afterwards see the cut sets."""
        for name, size in sizes.items():
            self.val_sets[name] = self.val_sets[name][:size]
            if name in self.val_examples:
                self.val_examples[name] = self.val_examples[name][:size]
        trainer = getattr(self, "trainer", None)
        val_loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
        if val_loop is not None and hasattr(val_loop, "_combined_loader"):
            val_loop._combined_loader = None  # loaders built before the cut (a sanity check) are rebuilt

    def eval_collator(self) -> EvalCollator:
        """The collator of validation batches."""
        self._require_setup()
        assert self.tokenizer is not None
        return EvalCollator(self.tokenizer.pad_token_id)

    def _load(self, key: str, path: str) -> list[QARecord]:
        with _about(key):
            return load_records(path, allow_conflicts=self.hparams.allow_conflicting_answers)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        if self.tokenizer is not None and self.train_examples:
            return
        self._load_tokenizer()
        self.train_examples = self._tokenize(self.train_records, "training set")
        self.val_examples = {
            name: self._tokenize(records, f"{name} set", self._first_index.get(name, 0)) for name, records in self.val_sets.items()
        }

    def _load_tokenizer(self) -> None:
        """The tokenizer, and the prompt style it resolves ``prompt_format`` to."""
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer, hp.cache_dir)
        self.prompt_style = prompt_style(self.task, hp.prompt_format, self.tokenizer, hp.tokenizer)

    def _tokenize(self, records: Sequence[QARecord], source: str, first_index: int = 0) -> list[Example]:
        """Tokenise all records in one batched call; reject any that would not fit ``max_length``."""
        assert self.tokenizer is not None
        hp = self.hparams
        if self.tokenizer.eos_token_id is None:
            raise DataError(f"tokenizer of '{hp.tokenizer}' has no EOS token, so answers could not end. Fix: use a model with one.")
        segments = [self._segments(r) for r in records]
        examples = []
        for index, (record, (ids, trained)) in enumerate(zip(records, encode_segments(self.tokenizer, segments))):
            n_answer = next((i for i, t in enumerate(reversed(trained)) if not t), len(trained))  # the final answer
            # ``text`` data has no prompt: its first token stands in (no label could be on it: nothing precedes it)
            n_prompt = max(len(ids) - n_answer, 1)
            if len(ids) > hp.max_length:
                raise DataError(
                    f"{record.origin or f'{source}: record {first_index + index}'} needs {n_prompt} prompt + {n_answer} answer tokens, more than "
                    f"data.max_length={hp.max_length}, so its answer would be truncated and nothing supervised. "
                    f"Question starts: {(record.question or record.target or '')[:60]!r}. Fix: shorten the question or raise --data.max_length."
                )
            earlier_turns = n_answer < len(ids) and any(trained[:n_prompt])  # a conversation's earlier assistant turns
            labels = tuple(i if t else -100 for i, t in zip(ids[:n_prompt], trained)) if earlier_turns else None
            examples.append(Example(tuple(ids[:n_prompt]), tuple(ids[n_prompt:]), record.question, record.answer, first_index + index, labels))
        return examples

    def _segments(self, record: QARecord) -> list[tuple[str, bool]]:
        """The record as prompt and answer text (``sft_lightning.data.prompt``); ``text`` data is trained on whole."""
        target = self.task.target(record, self.hparams.significant_digits)
        if not record.question:
            return [(target, True)]
        turns = [*record.context, ("user", record.question)]
        if self.prompt_style == "chat" and not self._template_checked:
            check_template_splits(self.tokenizer, turns, target)
            self._template_checked = True
        return example_segments(turns, target, self.prompt_style, self.tokenizer)

    def describe_samples(self, sample_ids: Sequence[int] | Tensor) -> list[str]:
        """One line per training-set id (a batch's ``sample_ids``) naming the record, so a report of a bad
        step can send the user to it: its place in the file, or for generated data its index in
        ``train_records`` of a data module with the same settings and seed. Never raises: an id that is
        not in the training set gets a line saying so.
        """
        ids = sample_ids.tolist() if isinstance(sample_ids, Tensor) else sample_ids
        return [self._describe_sample(int(i)) for i in ids]

    def _describe_sample(self, sample_id: int) -> str:
        records = self.train_records
        if not 0 <= sample_id < len(records):
            return f"sample {sample_id}: not in the training set (it has {len(records)} records)"
        record = records[sample_id]
        answer = f"{record.answer:.12g}" if isinstance(record.answer, float) else show_answer(record.answer)
        return f"{self.task.describe(sample_id, record)}: {_quoted(record.question or record.target or '')} -> {answer}"

    def left_out_ids(self) -> list[int]:
        """Training samples left out: ``skip_list``'s, then those the trainer's callbacks named (``GradientHealth``'s
        ``skipped_sample_ids``, restored from the checkpoint on resume), in that order, each once."""
        trainer = getattr(self, "trainer", None)
        named = [i for cb in getattr(trainer, "callbacks", None) or [] for i in getattr(cb, "skipped_sample_ids", ())]
        return list(dict.fromkeys(int(i) for i in [*self.given_left_out, *named] if 0 <= int(i) < len(self.train_records)))

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.tokenizer is not None
        sampler = LengthGroupedSampler([len(ex) for ex in self.train_examples], self.hparams.batch_size, self.hparams.seed)
        sampler.left_out = frozenset(self.left_out_ids())
        if getattr(getattr(self, "trainer", None), "world_size", 1) == 1:
            # each epoch asks again; under DDP the set stays as the loader was built (ranks must agree on the
            # order, and the distributed wrapper fixed its length), and newly named samples wait for the resume
            sampler.left_out_source = self.left_out_ids
        # Resumable: `fit --ckpt_path` after a mid-epoch stop continues with the very next batch.
        return ResumableDataLoader(
            self.train_examples,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            collate_fn=TrainCollator(self.tokenizer.pad_token_id),
            num_workers=self.hparams.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per validation set (``val_set_names`` order); a single loader when there is one set."""
        self._require_setup()
        loaders = [self._eval_loader(examples) for examples in self.val_examples.values()]
        return loaders[0] if len(loaders) == 1 else loaders

    def _eval_loader(self, examples: list[Example]) -> DataLoader:
        assert self.tokenizer is not None
        # Sorted by prompt length so generation batches pad little; order does not change metrics.
        ordered = sorted(examples, key=lambda ex: len(ex.prompt_ids))
        return DataLoader(
            ordered,
            batch_size=self.hparams.eval_batch_size,
            sampler=SequentialSampler(ordered),
            collate_fn=self.eval_collator(),
            num_workers=self.hparams.num_workers,
        )

    def _setup_predict(self) -> None:
        """Tokenise the questions file's prompts (only those: predicting needs no training data)."""
        hp = self.hparams
        if not self.predict_questions:
            raise DataError("predict needs questions. Fix: pass --data.predict_file FILE (.txt, .json or .jsonl).")
        if self.predict_examples:
            return
        self._load_tokenizer()
        prompts = [prompt_segments([*q.context, ("user", q.question)], self.prompt_style, self.tokenizer) for q in self.predict_questions]
        for index, (question, (ids, _)) in enumerate(zip(self.predict_questions, encode_segments(self.tokenizer, prompts))):
            if len(ids) >= hp.max_length:
                raise DataError(
                    f"{hp.predict_file}: question {index} needs {len(ids)} prompt tokens, not less than "
                    f"data.max_length={hp.max_length}. Question starts: {question.question[:60]!r}. "
                    "Fix: shorten the question or raise --data.max_length."
                )
            self.predict_examples.append(PromptExample(index, tuple(ids), question.question, question.answer))

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_examples:
            self.setup("predict")
        assert self.tokenizer is not None
        # Length-sorted so generation batches pad little; PredictionWriter restores the file order.
        ordered = sorted(self.predict_examples, key=lambda ex: len(ex.prompt_ids))
        return DataLoader(
            ordered,
            batch_size=self.hparams.eval_batch_size,
            sampler=SequentialSampler(ordered),
            collate_fn=PredictCollator(self.tokenizer.pad_token_id),
            num_workers=self.hparams.num_workers,
        )

    def _require_setup(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError("SFTDataModule.setup() must run before its dataloaders are requested")


def _without_questions_in(records: list[QARecord], sets: Iterable[list[QARecord]]) -> list[QARecord]:
    """``records`` minus those whose question (normalised: case, spacing, final punctuation) is in ``sets``."""
    asked = {normalize_question(r.question) for records_of_set in sets for r in records_of_set}
    kept = [r for r in records if normalize_question(r.question) not in asked]
    if len(kept) < len(records):
        rank_zero_info(f"generated training set: left out {len(records) - len(kept)} questions that a validation set asks too")
    return kept


def _shipped_unit_set(path: str) -> bool:
    """Whether ``path`` is the shipped hand-written unit-conversion set (``configs/embedded.yaml`` scores it)."""
    return Path(path).expanduser().resolve() == (PROJECT_DIR / "data" / "handwritten.jsonl").resolve()


def _read_skip_list(path: str) -> list[int]:
    """The sample ids of ``data.skip_list``, or one DataError naming the file and the fix."""
    try:
        return read_skip_list(path)
    except FileNotFoundError:
        raise DataError(f"data.skip_list: {path} does not exist. Fix: pass the skip_list.json of a run directory.") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"data.skip_list: {exc}. Fix: pass the skip_list.json that GradientHealth wrote.") from None


def _quoted(question: str, limit: int = 120) -> str:
    """The question as a JSON string (quotes and newlines escaped), cut to ``limit`` characters."""
    short = question if len(question) <= limit else question[: limit - 3] + "..."
    return json.dumps(short, ensure_ascii=False)


@contextlib.contextmanager
def _about(key: str, *errors: type[Exception]) -> Iterator[None]:
    """Prefix the message of a DataError (or of ``errors``) raised inside with the setting it came from."""
    try:
        yield
    except (DataError, *errors) as exc:
        raise DataError(f"{key}: {exc}") from None


def _checked_set_name(name: str, existing: dict[str, list[QARecord]]) -> str:
    """A validation set name becomes a metric prefix (``name/accuracy``): a plain, new identifier."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise DataError(
            f"data.extra_val_files: set name {name!r} must start with a letter and hold only letters, digits, '_' and '-' "
            "(it becomes the metric name NAME/accuracy). Fix: rename it."
        )
    if name in existing:
        raise DataError(f"data.extra_val_files: set name {name!r} is taken (by the generated sets). Fix: choose another name.")
    return name
