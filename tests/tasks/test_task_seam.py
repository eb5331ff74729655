"""The task seam: a task of one's own fits and validates through the CLI; the data module and the module
use only the protocol; the older --data.* flags build the same tasks as before."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import run_cli
from helpers.paths import REPO
from helpers.runs import read_metrics

from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.module import SFTModule
from sft_lightning.tasks import OwnData, Task, UnitConversion
from sft_lightning.tasks.flags import task_of_run_config
from tests.tasks.toy_task import Doubling, DoublingEquals


def _config_with_task(tmp_path: Path, task: str, **init_args: int) -> Path:
    """configs/smoke.yaml with ``data.task`` in place of its generator flags."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    for flag in ("train_size", "val_size"):
        config["data"].pop(flag)
    config["data"]["task"] = {"class_path": task, "init_args": init_args}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_toy_task_fits_and_validates_through_the_cli(tmp_path: Path) -> None:
    config = _config_with_task(tmp_path, "tests.tasks.toy_task.DoublingEquals", train_size=48, val_size=12)
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        fit = run_cli("fit", "--config", str(config), cwd=tmp_path, one_thread=False, tests_on_path=False)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "val/accuracy" in fit.stdout and "12 questions" in fit.stdout
    run_dir = tmp_path / "runs" / "smoke" / "version_0"
    assert any(r.get("val/accuracy") for r in read_metrics(run_dir))
    samples = [json.loads(line) for line in (run_dir / "val_samples.jsonl").read_text().splitlines()]
    assert samples and all(s["question"].startswith("Double ") for s in samples)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["task"]["class_path"] == "tests.tasks.toy_task.DoublingEquals"
    assert isinstance(task_of_run_config(saved["data"]), DoublingEquals)  # what `ask` answers with


def test_a_task_owns_its_target_and_its_parse() -> None:
    dm = SFTDataModule(task=DoublingEquals(train_size=8, val_size=4), tokenizer="tiny-random", seed=3)
    dm.setup("fit")
    assert dm.generated_val_sets == ["val"]  # the task said the set was drawn at random
    first = dm.train_examples[0]
    assert dm.tokenizer.decode(first.answer_ids, skip_special_tokens=True) == f"= {first.answer:g}"
    parsed = dm.task.parse(["= 14", " = 2.5 more", "<answer>14</answer>", ""]).tolist()
    assert parsed[:2] == [14.0, 2.5] and all(math.isnan(v) for v in parsed[2:])
    assert "training record 0" in dm.describe_samples([0])[0]


def test_the_module_generates_and_parses_with_the_data_modules_task() -> None:
    class Forced(Doubling):
        completion_trigger = None

        def completion(self, text: str) -> str | None:
            return "<answer>7</answer>" if len(text) >= 2 else None

    module = SFTModule(model="tiny-random", lora_r=2, max_new_tokens=40)
    module.configure_model()
    module.task = Forced(train_size=4, val_size=2)
    ids = module.tokenizer(["\nDouble 3.\n"], add_special_tokens=False)["input_ids"]
    texts = module.generate_texts(torch.tensor(ids), torch.ones(1, len(ids[0]), dtype=torch.long))
    assert texts[0].endswith("<answer>7</answer>")  # the hook wrote the row's end
    assert module.task_in_use().parse(texts).tolist() == [7.0]
    module.hparams.calculator = False  # the switch turns the task's hook off
    assert module.completion_hook() is None
    module.task = Doubling()  # a task without a completion gets no hook at all
    module.hparams.calculator = True
    assert module.completion_hook() is None


def test_the_older_flags_build_the_same_tasks(tmp_path: Path) -> None:
    assert isinstance(SFTDataModule(train_size=8, val_size=4).task, UnitConversion)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q{i}", "answer": i}) + "\n" for i in range(10)))
    dm = SFTDataModule(train_file=str(qa), val_size=3)
    assert isinstance(dm.task, OwnData) and len(dm.train_records) == 7 and len(dm.val_records) == 3
    assert dm.generated_val_sets == []  # a user's file is always scored whole
    assert task_of_run_config({"train_file": str(qa)}).train_file == str(qa)
    assert isinstance(task_of_run_config(None), UnitConversion)  # runs from before data.task


def test_a_task_on_top_of_a_config_with_generator_flags_says_they_do_not_apply(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"data.task is Doubling, so data.train_size, data.val_size .*do not apply.*init_args"):
        dm = SFTDataModule(task=Doubling(train_size=6, val_size=2), train_size=100, val_size=30)
    assert len(dm.train_records) == 6 and len(dm.val_records) == 2
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:  # on the command line, over a shipped config that sets train_size and val_size
        result = run_cli(
            "fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--data.task", "tests.tasks.toy_task.Doubling",
            "--data.task.train_size", "16", "--data.task.val_size", "4", "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2", cwd=tmp_path, one_thread=False, tests_on_path=False,
        )
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.train_size, data.val_size" in result.stderr and "4 questions" in result.stdout


def test_a_task_must_load_and_name_its_main_set() -> None:
    with pytest.raises(NotImplementedError, match="load"):
        Task().load(0, 4)

    class NoVal(Doubling):
        def load(self, seed: int, significant_digits: int):
            data = super().load(seed, significant_digits)
            return type(data)(data.train, {"other": data.val_sets["val"]})

    with pytest.raises(ValueError, match="must include 'val'"):
        SFTDataModule(task=NoVal())
