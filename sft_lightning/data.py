"""SFTDataModule: where the question/answer pairs come from and how they become batches.

Records are read and validated in ``__init__`` (no tokenizer, no model: bad input fails in a
second); tokenisation and the truncation check happen once in ``setup``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler
from transformers import PreTrainedTokenizerBase

from sft_lightning.batching import EvalCollator, Example, LengthGroupedSampler, ResumableDataLoader, TrainCollator
from sft_lightning.errors import check
from sft_lightning.metrics import MAIN_VAL_SET
from sft_lightning.models import EMBEDDED, load_tokenizer
from sft_lightning.predict import PredictCollator, PromptExample
from sft_lightning.prompt import format_answer, format_prompt
from sft_lightning.records import DataError, QARecord, Question, holdout_split, load_questions, load_records
from sft_lightning.unitconv import ConversionQuestion, generate_splits, normalize_question, select_units

UNSEEN_VAL_SET = "val_unseen"


class SFTDataModule(L.LightningDataModule):
    """Unit-conversion questions from the built-in generator, or the user's own files.

    Args:
        train_file: ``.json`` list of ``[question, answer]`` pairs or ``.jsonl`` with
            ``question``/``answer`` fields. None uses the generator.
        val_file: same formats; None holds out the last ``val_size`` records of ``train_file``
            (or generates a disjoint validation set when using the generator).
        train_size / val_size: generator set sizes (``val_size`` also sets the hold-out size).
        unseen_val_size: questions in the generated ``val_unseen`` set, phrased only with templates and
            unit spellings held out of training (generator only; 0: none).
        answer_format: ``worked`` trains on generated answers written out as ``1 ft = 0.305 m;
            6×0.305=<answer>1.83</answer>`` (see ``sft_lightning.worked``), ``bare`` on the tag alone.
            Questions from ``train_file`` always train on the bare tag.
        extra_val_files: more validation sets, ``{name: file}`` (same formats as ``val_file``); each
            is scored on its own and logged as ``name/accuracy`` and ``name/answer_rate``.
        allow_conflicting_answers: a file that asks the same question twice with different answers is
            an error naming both records; true trains on both, with a warning.
        seed: generator seed and shuffling seed.
        families / units: restrict the generator (see ``sft_lightning.unitconv``).
        batch_size / eval_batch_size: training and validation batch sizes.
        max_length: longest prompt+answer in tokens; a longer record is an error, never cut.
        significant_digits: digits kept in written answers (relative precision, so 0.000123
            stays 0.000123).
        tokenizer / cache_dir: the model name whose tokenizer to use (linked from
            ``model.model`` by the CLI) and the model cache directory.
        predict_file: questions for ``sft-lightning predict``: ``.txt`` (one per line), ``.json``
            or ``.jsonl`` (answers optional; given answers are scored).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        train_size: int = 2000,
        val_size: int = 200,
        unseen_val_size: int = 0,
        answer_format: Literal["worked", "bare"] = "worked",
        extra_val_files: dict[str, str] | None = None,
        allow_conflicting_answers: bool = False,
        seed: int = 1234,
        families: list[str] | None = None,
        units: dict[str, list[str]] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_length: int = 128,
        significant_digits: int = 4,
        num_workers: int = 0,
        tokenizer: str = EMBEDDED,
        cache_dir: str | None = None,
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check(value >= 1, f"data.{name}", value, ">= 1")
        check(max_length >= 2, "data.max_length", max_length, ">= 2 tokens", "use e.g. 128")
        check(1 <= significant_digits <= 15, "data.significant_digits", significant_digits, "in [1, 15]", "use 3 or 4")
        check(unseen_val_size >= 0, "data.unseen_val_size", unseen_val_size, ">= 0")
        check(num_workers >= 0, "data.num_workers", num_workers, ">= 0")
        if train_file is None:
            check(train_size >= 1, "data.train_size", train_size, ">= 1")
            check(val_size >= 1, "data.val_size", val_size, ">= 1")
        self.save_hyperparameters()
        self.train_records, self.val_sets = self._read_records(
            train_file, val_file, train_size, val_size, unseen_val_size, seed, families, units
        )
        for name, path in (extra_val_files or {}).items():
            self.val_sets[_checked_set_name(name, self.val_sets)] = self._load(f"data.extra_val_files.{name}", path)
        if train_file is None:
            # decontaminate: a generated question that a validation set also asks (short ones like
            # "1 TB to GB" are written the same way by anyone) would score memory, not skill
            self.train_records = _without_questions_in(self.train_records, self.val_sets.values())
        # Read now, like the training data: a bad questions file fails before any model loads.
        self.predict_questions: list[Question] = []
        if predict_file:
            with _about("data.predict_file"):
                self.predict_questions = load_questions(predict_file)
        self.tokenizer: PreTrainedTokenizerBase | None = None
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
        """The validation sets drawn from the generator: a time budget may cut these (``limit_val_sets``),
        never the hand-written set or the user's files."""
        if self.hparams.train_file is not None:
            return []
        generated = [UNSEEN_VAL_SET] + ([] if self.hparams.val_file else [MAIN_VAL_SET])
        return [name for name in self.val_sets if name in generated]

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

    def _read_records(
        self,
        train_file: str | None,
        val_file: str | None,
        train_size: int,
        val_size: int,
        unseen_val_size: int,
        seed: int,
        families: Sequence[str] | None,
        units: dict[str, list[str]] | None,
    ) -> tuple[list[QARecord], dict[str, list[QARecord]]]:
        if train_file is None:
            with _about("data.families", ValueError):
                select_units(families, None)
            with _about("data.units", ValueError):
                select_units(None, units)
            try:
                splits = generate_splits(train_size, val_size, seed, families=families, units=units, n_unseen=unseen_val_size)
            except ValueError as exc:  # unknown unit/family, or more questions than the units allow
                raise DataError(f"data.train_size/val_size/unseen_val_size: {exc}") from None
            sets = {MAIN_VAL_SET: self._load("data.val_file", val_file) if val_file else self._generated(splits.val)}
            if splits.val_unseen:
                sets[UNSEEN_VAL_SET] = self._generated(splits.val_unseen)
            return self._generated(splits.train), sets
        train = self._load("data.train_file", train_file)
        if val_file is not None:
            return train, {MAIN_VAL_SET: self._load("data.val_file", val_file)}
        train, val = holdout_split(train, val_size)
        return train, {MAIN_VAL_SET: val}

    def _load(self, key: str, path: str) -> list[QARecord]:
        with _about(key):
            return load_records(path, allow_conflicts=self.hparams.allow_conflicting_answers)

    def _generated(self, questions: Sequence[ConversionQuestion]) -> list[QARecord]:
        """Records of generated questions, with the worked target when ``answer_format`` is ``worked``."""
        digits = self.hparams.significant_digits
        if self.hparams.answer_format == "bare":
            return [QARecord(q.question, q.answer) for q in questions]
        return [QARecord(q.question, q.answer, format_answer(q.worked_value, digits, q.working)) for q in questions]

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        if self.tokenizer is not None and self.train_examples:
            return
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer, hp.cache_dir)
        self.train_examples = self._tokenize(self.train_records, hp.train_file or "generated training set")
        # Held-out validation records are the tail of train_file: number them as in the file.
        held_out = hp.train_file is not None and hp.val_file is None
        sources = {MAIN_VAL_SET: hp.val_file or hp.train_file, **(hp.extra_val_files or {})}
        self.val_examples = {
            name: self._tokenize(
                records,
                sources.get(name) or f"generated {name} set",
                first_index=len(self.train_records) if held_out and name == MAIN_VAL_SET else 0,
            )
            for name, records in self.val_sets.items()
        }

    def _tokenize(self, records: Sequence[QARecord], source: str, first_index: int = 0) -> list[Example]:
        """Tokenise all records in one batched call; reject any that would not fit ``max_length``."""
        assert self.tokenizer is not None
        hp = self.hparams
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer of '{hp.tokenizer}' has no EOS token, so answers could not end. Fix: use a model with one.")
        prompts = self.tokenizer([format_prompt(r.question) for r in records], add_special_tokens=False)["input_ids"]
        answers = self.tokenizer(
            [r.target or format_answer(r.answer, hp.significant_digits) for r in records], add_special_tokens=False
        )["input_ids"]
        examples = []
        for index, (record, p_ids, a_ids) in enumerate(zip(records, prompts, answers)):
            a_ids = [*a_ids, eos]
            if len(p_ids) + len(a_ids) > hp.max_length:
                raise DataError(
                    f"{source}: record {first_index + index} needs {len(p_ids)} prompt + {len(a_ids)} answer tokens, more than "
                    f"data.max_length={hp.max_length}, so its answer would be truncated and nothing supervised. "
                    f"Question starts: {record.question[:60]!r}. Fix: shorten the question or raise --data.max_length."
                )
            examples.append(Example(tuple(p_ids), tuple(a_ids), record.question, record.answer, first_index + index))
        return examples

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
        if record.origin is not None:
            where = record.origin
        elif self.hparams.train_file is None:
            where = f"generated training record {sample_id} (seed {self.hparams.seed})"
        else:
            where = f"training record {sample_id}"
        return f"{where}: {_quoted(record.question)} -> {record.answer:.12g}"

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.tokenizer is not None
        sampler = LengthGroupedSampler([len(ex) for ex in self.train_examples], self.hparams.batch_size, self.hparams.seed)
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
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer, hp.cache_dir)
        prompts = self.tokenizer([format_prompt(q.question) for q in self.predict_questions], add_special_tokens=False)
        for index, (question, ids) in enumerate(zip(self.predict_questions, prompts["input_ids"])):
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
