"""`sft-lightning predict` and `sft-lightning ask` on a real trained run, as a user types them.

One module-scoped run of the tiny offline model memorises TRAINED_QUESTION (see helpers.runs), so
the parsed number is checked exactly; for the other questions the printed number must be
``parse_answer`` of the printed raw text, and every route to the same weights (checkpoint,
adapter, run directory; predict and ask) must produce the same text.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import assert_clean_error, run_cli, run_main
from helpers.paths import REPO, SMOKE
from helpers.runs import TRAINED_ANSWER, TRAINED_QUESTION, memorised_run, read_metrics

from sft_lightning.data.records import load_questions
from sft_lightning.evaluation.metrics import parse_answer

QUESTIONS_FILE = REPO / "docs" / "questions.txt"  # the example file of docs/usage.md
QUESTIONS = [q.question for q in load_questions(QUESTIONS_FILE)]

# A plain transformers + peft program: no sft_lightning import. The adapter's config names the
# cached base model directory, which is all PeftModel needs.
PLAIN_PEFT_LOAD = r"""
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter = sys.argv[1]
base_path = json.load(open(f"{adapter}/adapter_config.json"))["base_model_name_or_path"]
base = AutoModelForCausalLM.from_pretrained(base_path)
model = PeftModel.from_pretrained(base, adapter).eval()
tok = AutoTokenizer.from_pretrained(adapter)
prompt = "\nHow many meters are in 6 km?\n"  # sft_lightning.data.prompt.format_prompt's format
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
out = model.generate(**ids, max_new_tokens=48, do_sample=False)  # room for a worked answer
with model.disable_adapter():
    untuned = model.generate(**ids, max_new_tokens=48, do_sample=False)
n = ids["input_ids"].shape[1]
print(json.dumps({"adapted": tok.decode(out[0, n:]), "untuned": tok.decode(untuned[0, n:])}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return memorised_run(tmp_path_factory.mktemp("trained"))


def cwd_of(run_dir: Path) -> Path:
    return run_dir.parents[2]  # <cwd>/runs/smoke/version_0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def parse_ask_output(stdout: str) -> list[dict[str, str]]:
    """The `question / answer / raw` blocks `ask` prints, as dicts."""
    blocks = []
    for block in stdout.strip().split("\n\n"):
        fields = dict(line.split(None, 1) for line in block.splitlines())
        blocks.append(fields)
    return blocks


def predict(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    result = run_cli("predict", "--config", SMOKE, "--model.max_new_tokens", "24", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(row for row in result.stdout.splitlines() if row.startswith("predictions "))
    return result, read_jsonl(cwd / line.split(None, 1)[1])


# ------------------------------------------------------------------------------------ predict


def test_predict_from_checkpoint_answers_every_question_in_file_order(trained: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    result, rows = predict(cwd_of(trained), "--ckpt_path", str(ckpt), "--data.predict_file", str(QUESTIONS_FILE))
    assert len(QUESTIONS) == 5
    assert [r["index"] for r in rows] == list(range(5)) and [r["question"] for r in rows] == QUESTIONS
    assert rows[0]["parsed"] == TRAINED_ANSWER and rows[0]["output"] == "<answer>6000</answer>"
    for row in rows:  # the file holds exactly what parse_answer makes of the output
        assert row["parsed"] == parse_answer(row["output"])
        assert row["expected"] is None and row["correct"] is None
    # The table: a header with the count, the parsed number, the answered count and the file.
    out = result.stdout
    assert "==== sft-lightning predict: 5 questions ====" in out
    assert f"   0  {'6000':>12}  {TRAINED_QUESTION} -> '<answer>6000</answer>'" in out
    answered = sum(r["parsed"] is not None for r in rows)
    assert f"answered         {answered}/5" in out
    # predict gets its own run directory, with the resolved config next to the predictions.
    run_dir = cwd_of(trained) / "runs" / "smoke" / "version_1"
    assert (run_dir / "predictions.jsonl").is_file() and (run_dir / "config.yaml").is_file()


def test_predict_from_adapter_matches_checkpoint_and_scores_given_answers(trained: Path, tmp_path: Path) -> None:
    """A .jsonl with answers is scored with the validation rule; adapter and checkpoint agree."""
    questions = tmp_path / "scored.jsonl"
    questions.write_text(
        json.dumps({"question": TRAINED_QUESTION, "answer": 6000})
        + "\n"
        + json.dumps({"question": TRAINED_QUESTION, "answer": 6400})  # 6.7% off: wrong at 5% tolerance
        + "\n"
        + json.dumps({"question": "How many feet are in 3 m?"})  # no answer: not scored
        + "\n"
    )
    cwd = cwd_of(trained)
    via_adapter, rows = predict(cwd, "--model.adapter", str(trained / "adapter"), "--data.predict_file", str(questions))
    _, via_ckpt = predict(cwd, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--data.predict_file", str(questions))
    assert [r["output"] for r in rows] == [r["output"] for r in via_ckpt]
    assert [(r["expected"], r["correct"]) for r in rows] == [(6000.0, True), (6400.0, False), (None, None)]
    assert "accuracy         0.5000 (1/2 with an expected answer)" in via_adapter.stdout
    assert "(expected 6400)" in via_adapter.stdout


def test_predict_without_questions_file_is_a_clean_error(trained: Path) -> None:
    result = run_cli("predict", "--config", SMOKE, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), cwd=cwd_of(trained))
    assert_clean_error(result, "predict needs questions", "--data.predict_file")


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("missing.txt", None, ["questions file not found", "Fix: check the path"]),
        ("questions.tsv", "q\n", ["unknown questions format '.tsv'", ".txt (one question per line)"]),
        ("empty.txt", "# only a comment\n\n", ["contains no questions"]),
        ("bad.json", '["How many m in 1 km?",\n', ["invalid JSON at line 2"]),
        ("bad.jsonl", '{"q": "How many m in 1 km?"}\n', ["line 1: expected a question string", "'question' field"]),
    ],
)
def test_bad_questions_file_fails_before_the_model_loads(
    tmp_path: Path, name: str, content: str | None, fragments: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    monkeypatch.chdir(tmp_path)  # in this process: a console script's start would cost more than the check
    result = run_main(["predict", "--config", SMOKE, "--data.predict_file", str(path)], capsys)
    assert_clean_error(result, str(path), *fragments)
    assert not (tmp_path / "runs").exists()  # failed in the data module's __init__: no run directory


# ---------------------------------------------------------------------------------------- ask


def test_ask_from_adapter_prints_parsed_number_and_raw_text(trained: Path) -> None:
    result = run_cli("ask", TRAINED_QUESTION, "--adapter", str(trained / "adapter"), cwd=cwd_of(trained))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"question  {TRAINED_QUESTION}\nanswer    6000\nraw       '<answer>6000</answer>'\n"


def test_ask_checkpoint_adapter_and_run_dir_agree_with_predict(trained: Path) -> None:
    """Every way of naming the trained weights gives predict's exact outputs, parsed the same way."""
    cwd = cwd_of(trained)
    # the run's data settings (its file's task reads its answers), as ask takes them from the run
    _, rows = predict(cwd, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--data.predict_file", str(QUESTIONS_FILE),
                      "--data.train_file", str(cwd / "one.json"), "--data.val_file", str(cwd / "one.json"))
    expected_raw = [repr(r["output"]) for r in rows]
    for flag, path in (
        ("--checkpoint", trained / "checkpoints" / "last.ckpt"),
        ("--adapter", trained / "adapter"),
        ("--run", trained),
    ):
        result = run_cli("ask", *QUESTIONS, flag, str(path), cwd=cwd)
        assert result.returncode == 0, result.stderr[-3000:]
        blocks = parse_ask_output(result.stdout)
        assert [b["question"] for b in blocks] == QUESTIONS
        assert [b["raw"] for b in blocks] == expected_raw, flag
        for block, row in zip(blocks, rows):
            shown = block["answer"]
            if row["parsed"] is None:
                assert shown.startswith("none (no answer in the output")
            else:
                assert float(shown) == row["parsed"]
        assert blocks[0]["answer"] == "6000"


def test_ask_run_dir_falls_back_to_last_checkpoint(trained: Path, tmp_path: Path) -> None:
    """A run stopped before the export has no adapter/ yet: ask uses checkpoints/last.ckpt."""
    run = tmp_path / "interrupted"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    (run / "config.yaml").write_text((trained / "config.yaml").read_text())
    result = run_cli("ask", TRAINED_QUESTION, "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answer    6000\n" in result.stdout
    assert f"answering with the checkpoint {run / 'checkpoints' / 'last.ckpt'}" in result.stderr


def test_ask_bare_adapter_needs_model_name(trained: Path, tmp_path: Path) -> None:
    """An adapter copied out of its run has no config beside it; --model names the base."""
    adapter = tmp_path / "my_adapter"
    shutil.copytree(trained / "adapter", adapter)
    result = run_cli("ask", TRAINED_QUESTION, "--adapter", str(adapter), cwd=tmp_path)
    assert_clean_error(result, f"cannot tell which base model {adapter}", "Fix: pass --model NAME")
    result = run_cli("ask", TRAINED_QUESTION, "--adapter", str(adapter), "--model", "tiny-random", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answer    6000\n" in result.stdout


def test_ask_errors_are_one_clean_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus_ckpt = tmp_path / "bogus.ckpt"
    bogus_ckpt.write_text("not a checkpoint")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    foreign_ckpt = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign_ckpt)
    cases = [
        (["--adapter", str(tmp_path / "nope")], [f"{tmp_path / 'nope'} does not exist", "Fix: pass an adapter directory"]),
        (["--adapter", str(trained)], [f"adapter directory {trained} has no adapter_config.json", "use --run"]),
        (["--checkpoint", str(bogus_ckpt)], [f"could not read checkpoint {bogus_ckpt}", "checkpoints/last.ckpt"]),
        (["--checkpoint", str(foreign_ckpt)], [f"{foreign_ckpt} is not a Lightning checkpoint"]),
        (["--checkpoint", str(text_file)], ["is a file but not a .ckpt checkpoint"]),
        (["--run", str(empty_run)], [f"{empty_run} holds neither an exported adapter", "checkpoints/last.ckpt"]),
    ]
    for args, fragments in cases:
        assert_clean_error(run_main(["ask", TRAINED_QUESTION, *args], capsys), *fragments)
    assert_clean_error(run_main(["ask", "  ", "--run", str(trained)], capsys), "ask got an empty question")
    assert_clean_error(
        run_main(["ask", "q", "--run", str(trained), "--max-new-tokens", "0"], capsys), "--max-new-tokens must be >= 1"
    )


def test_ask_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(["ask", TRAINED_QUESTION], capsys)  # no weights named
    assert result.returncode == 2 and "one of the arguments --adapter --checkpoint --run is required" in result.stderr
    result = run_main(["ask", "--adapter", "x"], capsys)  # no question
    assert result.returncode == 2 and "the following arguments are required: QUESTION" in result.stderr


# -------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_readme_walkthrough_on_the_embedded_model(tmp_path: Path) -> None:
    """The commands of docs/usage.md on SmolLM2-135M, offline: a real, short LoRA fit (finite and decreasing
    loss, a LoRA-only checkpoint, an adapter that a plain transformers + peft program loads), then ask,
    predict and report on what it wrote."""
    embedded = str(REPO / "configs" / "embedded.yaml")
    fit = run_cli(
        "fit", "--config", embedded,
        # 30 steps, the learning rate's warm-up and cosine decay spread over them (max_steps ends the run)
        "--trainer.max_steps", "30", "--trainer.log_every_n_steps", "1",
        "--data.train_size", "240", "--data.val_size", "20", "--data.batch_size", "8",
        "--data.unseen_val_size", "0", "--data.extra_val_files", "null",
        cwd=tmp_path, timeout=900,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "embedded" / "version_0"
    for name in ("config.yaml", "metrics.csv", "adapter/adapter_config.json"):
        assert (run_dir / name).is_file(), name
    losses = [float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    # The untuned model's answer-token loss is ~3; the format is learned within a few steps.
    assert losses[0] > 2.0 and sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    # the checkpoint holds the LoRA weights only, never the frozen base model
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora_" in key for key in state), [k for k in state if "lora_" not in k][:5]
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT_LOAD, str(run_dir / "adapter")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    # the adapter changes the answer into the trained worked format ("km to m: 6×..."); the factor is the model's
    # own here, with no unit table, and 30 steps need not have learnt it
    outputs = json.loads(plain.stdout.strip().splitlines()[-1])
    assert outputs["adapted"] != outputs["untuned"] and " to m: " in outputs["adapted"], outputs

    ask = run_cli("ask", "How many feet are in 3 m?", "--adapter", str(run_dir / "adapter"), cwd=tmp_path, timeout=600)
    assert ask.returncode == 0, ask.stderr[-3000:]
    block = parse_ask_output(ask.stdout)[0]
    raw = eval(block["raw"])  # the repr ask printed
    parsed = parse_answer(raw)
    if parsed is None:  # 30 steps need not settle the format: in fp32 (an AVX2 CPU) one run wrote "1 ft = 0.000..."
        assert block["answer"].startswith("none"), block
    else:
        assert float(block["answer"]) == parsed

    predict_run = run_cli(
        "predict", "--config", embedded, "--model.adapter", str(run_dir / "adapter"),
        "--data.predict_file", str(QUESTIONS_FILE), "--data.extra_val_files", "null", cwd=tmp_path, timeout=900,
    )
    assert predict_run.returncode == 0, predict_run.stderr[-3000:]
    rows = read_jsonl(tmp_path / "runs" / "embedded" / "version_1" / "predictions.jsonl")
    assert [r["question"] for r in rows] == QUESTIONS
    # every row's number is the parse of its own output; 30 steps need not settle the format on every question
    # (in fp32 on an AVX2 CPU, 2 of the 5 were answered in the tag)
    assert [r["parsed"] for r in rows] == [parse_answer(r["output"]) for r in rows]
    assert sum(r["parsed"] is not None for r in rows) >= 1

    report = run_cli("report", str(run_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
