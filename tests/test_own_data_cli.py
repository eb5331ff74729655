"""``sft-lightning fit --config configs/own_data.yaml --data.train_file FILE`` from outside the checkout, with a
tiny model whose tokenizer has a chat template: the summary, the held-out share, the validation at the end of a
step-based run, a conversation learnt through the template and answered as text by ``ask``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.chat_model import save_chat_model
from helpers.cli import run_cli
from helpers.paths import REPO

from sft_lightning.cli.config_paths import resolve_config_paths

OWN_DATA = str(REPO / "configs" / "own_data.yaml")
FAST = ("--budget.minutes", "null", "--trainer.precision", "32-true", "--model.lora_layers", "null", "--data.max_length", "256")
CONVERSATION = {"messages": [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Peru?"}, {"role": "assistant", "content": "Lima"},
]}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_model(tmp_path_factory.mktemp("chat_model"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_conversation_is_learnt_through_the_chat_template_and_asked_as_text(tmp_path: Path, chat_model: Path) -> None:
    _jsonl(tmp_path / "chat.jsonl", [CONVERSATION] * 16)
    fit = run_cli(
        "fit", "--config", OWN_DATA, "--data.train_file", "chat.jsonl", "--data.val_file", "chat.jsonl", "--model.model", str(chat_model),
        *FAST, "--trainer.max_steps", "60", "--trainer.max_epochs", "-1", "--model.learning_rate", "0.01", "--data.batch_size", "16", cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert re.search(r"^val/accuracy +1\.0000 .*answer rate 1\.0000 +16 questions", fit.stdout, re.MULTILINE), fit.stdout[-2000:]
    run = tmp_path / "runs" / "own_data" / "version_0"
    asked = run_cli("ask", "And of Peru?", "--run", str(run), cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "answer    Lima\n" in asked.stdout  # a text answer, shown as text, through the same template


def test_a_small_file_holds_out_a_share_and_validates_at_the_end_of_max_steps(tmp_path: Path, chat_model: Path) -> None:
    rows = [{"prompt": f"{a} plus {b} is", "completion": str(a + b)} for a in range(10) for b in range(10)]  # 100 records
    _jsonl(tmp_path / "sums.jsonl", rows)
    fit = run_cli("fit", "--config", OWN_DATA, "--data.train_file", "sums.jsonl", "--model.model", str(chat_model), *FAST,
                  "--trainer.max_steps", "3", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert re.search(r"^val/accuracy +\d\.\d{4} +\(95% CI .*answer rate \d\.\d{4} +10 questions", fit.stdout, re.MULTILINE), fit.stdout
    assert "10 of the 100 records of sums.jsonl held out (data.val_fraction 0.1" in fit.stdout
    assert "validating at step 3" in fit.stderr + fit.stdout  # no val_check_interval reached: validated at the end anyway


def test_text_data_reports_its_loss_and_perplexity(tmp_path: Path, chat_model: Path) -> None:
    _jsonl(tmp_path / "notes.jsonl", [{"text": f"Note {i}: the capital of France is Paris."} for i in range(20)])
    fit = run_cli("fit", "--config", OWN_DATA, "--data.train_file", "notes.jsonl", "--model.model", str(chat_model), *FAST,
                  "--trainer.max_steps", "2", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert re.search(r"^val/loss +\d+\.\d{4}\nperplexity +\d+\.\d\d +\(text records have no prompt/answer split", fit.stdout, re.MULTILINE)
    assert "val/accuracy" not in fit.stdout


def test_config_paths_resolve_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.jsonl").write_text("{}\n")
    config_file = tmp_path / "cfg" / "c.yaml"
    config_file.write_text("data:\n  train_file: mine.jsonl\n  extra_val_files: {handwritten: data/handwritten.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    config = {"config": [config_file], "data": {"train_file": "mine.jsonl", "val_file": "given.jsonl",
                                                "extra_val_files": {"handwritten": "data/handwritten.jsonl"}}}
    resolve_config_paths(config)
    assert config["data"]["train_file"] == str(tmp_path / "cfg" / "mine.jsonl")  # next to the config
    assert config["data"]["extra_val_files"]["handwritten"] == str(REPO / "data" / "handwritten.jsonl")  # shipped data
    assert config["data"]["val_file"] == "given.jsonl"  # not the config's: from the current directory, as given
