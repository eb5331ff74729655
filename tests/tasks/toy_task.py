"""A task of its own in a few lines, importing nothing from the unit-conversion task: doubling numbers."""

import random
import re

import torch

from sft_lightning.data.records import QARecord
from sft_lightning.tasks import Task, TaskData


class Doubling(Task):
    """ "Double 7." -> 14, from a seeded generator; the validation set is drawn at random, so a budget may cut it."""

    def __init__(self, train_size: int = 64, val_size: int = 16) -> None:
        self.train_size, self.val_size = train_size, val_size

    def load(self, seed: int, significant_digits: int) -> TaskData:
        numbers = random.Random(seed).sample(range(1, 1000), self.train_size + self.val_size)
        records = [QARecord(f"Double {n}.", 2.0 * n) for n in numbers]
        return TaskData(records[: self.train_size], {"val": records[self.train_size :]}, resizable=["val"])


class DoublingEquals(Doubling):
    """The same questions, answered in a format of the task's own ("= 14") and parsed by it."""

    def target(self, record: QARecord, significant_digits: int) -> str:
        return f"= {record.answer:g}"

    def parse(self, texts: list[str]) -> torch.Tensor:
        found = [re.match(r"\s*=\s*(-?\d+(?:\.\d+)?)", text) for text in texts]
        return torch.tensor([float(m.group(1)) if m else float("nan") for m in found], dtype=torch.float64)
