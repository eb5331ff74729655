"""SFTDataModule: where the question/answer pairs come from and how they become batches.

Records are read and validated in ``__init__`` (no tokenizer, no model: bad input fails in a
second); tokenisation and the truncation check happen once in ``setup``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader, SequentialSampler
from transformers import PreTrainedTokenizerBase

from sft_lightning.batching import EvalCollator, Example, LengthGroupedSampler, ResumableDataLoader, TrainCollator
from sft_lightning.models import EMBEDDED, load_tokenizer
from sft_lightning.predict import PredictCollator, PromptExample
from sft_lightning.prompt import format_answer, format_prompt
from sft_lightning.records import DataError, QARecord, Question, holdout_split, load_questions, load_records, make_record
from sft_lightning.unitconv import generate_splits


class SFTDataModule(L.LightningDataModule):
    """Unit-conversion questions from the built-in generator, or the user's own files.

    Args:
        train_file: ``.json`` list of ``[question, answer]`` pairs or ``.jsonl`` with
            ``question``/``answer`` fields. None uses the generator.
        val_file: same formats; None holds out the last ``val_size`` records of ``train_file``
            (or generates a disjoint validation set when using the generator).
        train_size / val_size: generator set sizes (``val_size`` also sets the hold-out size).
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
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("max_length", max_length)):
            if value < 1:
                raise DataError(f"data.{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.train_records, self.val_records = self._read_records(
            train_file, val_file, train_size, val_size, seed, families, units
        )
        # Read now, like the training data: a bad questions file fails before any model loads.
        self.predict_questions: list[Question] = load_questions(predict_file) if predict_file else []
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.predict_examples: list[PromptExample] = []

    @staticmethod
    def _read_records(
        train_file: str | None,
        val_file: str | None,
        train_size: int,
        val_size: int,
        seed: int,
        families: Sequence[str] | None,
        units: dict[str, list[str]] | None,
    ) -> tuple[list[QARecord], list[QARecord]]:
        if train_file is None:
            if val_size < 1 or train_size < 1:
                raise DataError(f"data.train_size and data.val_size must be >= 1, got {train_size} and {val_size}")
            try:
                train_q, val_q = generate_splits(train_size, val_size, seed, families=families, units=units)
            except ValueError as exc:  # unknown unit/family, or more questions than the units allow
                raise DataError(f"generator configuration: {exc}") from None
            train = [make_record(q.question, q.answer, "generated question") for q in train_q]
            generated_val = [make_record(q.question, q.answer, "generated question") for q in val_q]
            val = load_records(val_file) if val_file else generated_val
            return train, val
        train = load_records(train_file)
        if val_file is not None:
            return train, load_records(val_file)
        return holdout_split(train, val_size)

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
        self.val_examples = self._tokenize(
            self.val_records,
            hp.val_file or hp.train_file or "generated validation set",
            first_index=len(self.train_records) if held_out else 0,
        )

    def _tokenize(self, records: Sequence[QARecord], source: str, first_index: int = 0) -> list[Example]:
        """Tokenise all records in one batched call; reject any that would not fit ``max_length``."""
        assert self.tokenizer is not None
        hp = self.hparams
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer of '{hp.tokenizer}' has no EOS token, so answers could not end. Fix: use a model with one.")
        prompts = self.tokenizer([format_prompt(r.question) for r in records], add_special_tokens=False)["input_ids"]
        answers = self.tokenizer(
            [format_answer(r.answer, hp.significant_digits) for r in records], add_special_tokens=False
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
            examples.append(Example(tuple(p_ids), tuple(a_ids), record.question, record.answer))
        return examples

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

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.tokenizer is not None
        # Sorted by prompt length so generation batches pad little; order does not change metrics.
        ordered = sorted(self.val_examples, key=lambda ex: len(ex.prompt_ids))
        return DataLoader(
            ordered,
            batch_size=self.hparams.eval_batch_size,
            sampler=SequentialSampler(ordered),
            collate_fn=EvalCollator(self.tokenizer.pad_token_id),
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
