"""The benchmark harness (`make bench`) runs end to end on the tiny offline model, so it cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO


# ~40 s on 2 idle cores (worker processes each import torch/lightning/transformers); tiny model only, so
# not `slow` by this suite's definition, and it keeps `make bench` from rotting between benchmark runs.
def test_harness_runs_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    from benchmarks.common import machine_kind

    kind = machine_kind("cpu")
    readme.write_text(f"# x\n\n<!-- bench-table:{kind}:start -->\nold table\n<!-- bench-table:{kind}:end -->\n\nafter\n")
    results = tmp_path / "results"
    command = [
        sys.executable, "-m", "benchmarks",
        "--model", "tiny-random", "--train-size", "64", "--warmup", "1", "--steps", "1", "--padded-steps", "1",
        "--repeats", "1", "--callback-pairs", "2", "--callback-steps", "3",
        "--questions", "8", "--val-repeats", "1", "--matmul-size", "128", "--ddp-pairs", "1", "--ddp-steps", "2",
        "--results", str(results), "--readme", str(readme),
        "--set", "model.compile=false",  # compilation would take most of the test's time
        "--set", "data.max_length=256",  # the tiny model's tokenizer is one token per character
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + _first_traceback(done.stderr) + done.stderr[-3000:]

    for name in ("hardware", "train_throughput", "validation_speed", "summary"):
        assert (results / f"{name}-{kind}.json").is_file(), name  # one file per machine kind
    train = json.loads((results / f"train_throughput-{kind}.json").read_text())
    assert set(train["arms"]) == {"sftl", "sftl_nocb", "hf_pad128", "hf_dynamic", "hf_dynamic_bf16"}
    for arm in train["arms"].values():
        assert arm["tokens_per_s"]["median"] > 0 and arm["peak_rss_training_mb"] > 0
    assert train["arms"]["hf_pad128"]["mean_batch_width"] == 128
    assert train["arms"]["sftl"]["padding_fraction"] < train["arms"]["hf_pad128"]["padding_fraction"]
    assert set(train["ratios"]) == {"sftl/hf_pad128", "sftl/hf_dynamic", "sftl/hf_dynamic_bf16"}
    callback = train["callback_overhead"]
    assert callback["losses_identical_every_pair"] and callback["measured_over"].startswith("2 dedicated pairs")
    assert len(callback["same_batch_step_ratio"]["per_pair"]) == 2
    assert [pair["order"][0] for pair in callback["pairs"]] == ["sftl", "sftl_nocb"]  # alternating order
    assert {len(steps) for pair in callback["pairs"] for steps in pair["step_s"].values()} == {3}
    assert len(train["rounds"][0]["runs"]["sftl"]["step_s"]) == train["config"]["steps"]
    assert train["machine"]["cpu_count"] >= 1

    ddp = json.loads((results / f"callback_overhead_ddp-{kind}.json").read_text())
    assert ddp["config"]["devices"] == 2 and len(ddp["pairs"]) == 1 and ddp["summary"]["all_losses_identical"]
    assert {len(ddp["pairs"][0][v]["step_times_s"]) for v in ("with_callback", "without_callback")} == {1 + 2}

    validation = json.loads((results / f"validation_speed-{kind}.json").read_text())
    assert validation["config"]["questions"] == 8
    assert set(validation["seconds"]) == {"sftl_validate", "sftl_generate", "hf_generate", "sftl_generate_unmerged"}
    assert validation["prediction_agreement_merged_vs_unmerged"] > 0

    text = readme.read_text()
    assert "old table" not in text and "| paired ratio |" in text and text.endswith("after\n")
    assert "| step time under DDP (2 processes, gloo), with / without GradientHealth (1 pairs x 2 steps) |" in text


def test_flop_formula_counts_frozen_body_head_and_lora() -> None:
    from peft import LoraConfig, get_peft_model

    from benchmarks.common import parameter_counts, useful_flops
    from sft_lightning.models.tiny import build_tiny_llama

    model = get_peft_model(build_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    counts = parameter_counts(model)
    total = sum(p.numel() for p in model.parameters())
    assert counts["tied_embeddings"]  # the head is the embedding: counted once, as the head
    assert counts["n_body"] + counts["n_head"] + counts["n_lora"] == total
    assert useful_flops(counts, tokens=10, supervised=3) == 4 * counts["n_body"] * 10 + 4 * counts["n_head"] * 3 + 6 * counts["n_lora"] * 10


def test_embedded_settings_follow_the_cli_config() -> None:
    from benchmarks.common import embedded_settings

    settings = embedded_settings()
    assert settings["data"]["tokenizer"] == settings["model"]["model"]
    assert settings["trainer"]["precision"] and "callbacks" not in settings["trainer"]
    assert any(spec["class_path"].endswith("GradientHealth") for spec in settings["callbacks"])


def test_readme_keeps_one_block_per_machine_kind(tmp_path: Path) -> None:
    from benchmarks.__main__ import markers, update_readme

    amx, zen = markers("cpu-amx"), markers("cpu-avx512bf16")
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{amx[0]}\nintel\n{amx[1]}\nb\n")
    assert update_readme(readme, "| amd |", "cpu-avx512bf16")  # a new kind: added after the last block
    assert readme.read_text() == f"a\n{amx[0]}\nintel\n{amx[1]}\n\n{zen[0]}\n| amd |\n{zen[1]}\nb\n"
    assert update_readme(readme, "| amd 2 |", "cpu-avx512bf16")  # the same kind: replaced, the other kept
    assert readme.read_text() == f"a\n{amx[0]}\nintel\n{amx[1]}\n\n{zen[0]}\n| amd 2 |\n{zen[1]}\nb\n"
    bare = tmp_path / "BARE.md"
    bare.write_text("a\nb\n")
    assert not update_readme(bare, "| x |", "cuda") and bare.read_text() == "a\nb\n"


def test_same_batch_ratio_pairs_step_j_with_step_j() -> None:
    from benchmarks.common import same_batch_ratio

    # one slow outlier step in either run moves the ratio of medians, not the median of step-by-step ratios
    assert same_batch_ratio([1.1, 2.2, 3.3, 9.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.1)
    assert same_batch_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == 2.0
    with pytest.raises(ValueError, match="different lengths"):
        same_batch_ratio([1.0], [1.0, 2.0])


@pytest.mark.slow
def test_learning_comparison_runs_two_budgeted_arms_on_the_tiny_model(tmp_path: Path) -> None:
    """`python -m benchmarks.learning`: each arm a real budgeted fit through the CLI, results and table."""
    readme = tmp_path / "README.md"
    kind = "cpu-test"
    readme.write_text(f"x\n<!-- learning-table:{kind}:start -->\nSTALE-TABLE\n<!-- learning-table:{kind}:end -->\ny\n")
    results = tmp_path / "learning.json"
    command = [
        sys.executable, "-m", "benchmarks.learning", "--arms", "worked", "bare", "--minutes", "0.3",
        "--out-dir", str(tmp_path / "runs"), "--results", str(results), "--readme", str(readme), "--kind", kind, "--",
        "--model.model", "tiny-random", "--model.compile", "false", "--model.max_new_tokens", "8",
        "--data.train_size", "400", "--data.max_length", "256", "--data.eval_batch_size", "64",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    arms = {arm["arm"]: arm for arm in json.loads(results.read_text())["arms"]}
    assert set(arms) == {"worked", "bare"}
    for arm in arms.values():
        assert arm["steps"] > 0 and "ended by the budget" in arm["summary"]
        assert {"val/accuracy", "val_unseen/accuracy", "handwritten/accuracy"} <= set(arm)
    assert "--data.answer_format bare" in arms["bare"]["command"]
    text = readme.read_text()
    assert "STALE-TABLE" not in text and "| bare `<answer>` only," in text and text.endswith("y\n")


def _first_traceback(stderr: str) -> str:
    """The first traceback of a failed run (a DDP rank that died first), which the tail of stderr may not show."""
    start = stderr.find("Traceback")
    return "" if start < 0 else "\n--- first traceback ---\n" + stderr[start : start + 3000] + "\n--- end of stderr ---\n"
