"""Bad samples stay out: a record a GradientHealth trip names is left out from the next epoch on, after a resume,
and in a later fit given the skip list; a resumed run with a skip list ends like an uninterrupted one."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import torch
import yaml
from helpers.paths import REPO
from helpers.runs import adapter_weights, interrupt_at, smoke_fit

POISONED = 5  # the record whose question holds the marker: its sample id (its index in the training file)


def _data(tmp_path: Path) -> tuple[str, str]:
    train = [{"question": f"Convert {i} km to m.", "answer": 1000 * i} for i in range(32)]
    train[POISONED]["question"] = "Convert 5 € to m."
    val = [{"question": f"Convert {i} m to cm.", "answer": 100 * i} for i in range(4)]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")


def _config(tmp_path: Path) -> str:
    """smoke.yaml, 32 records in batches of 8 (4 steps an epoch), GradientHealth skipping, the poison on."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["on_nonfinite"] = "skip"
    config["trainer"]["callbacks"].append({"class_path": "helpers.faults.PoisonMarkedRows"})
    train, val = _data(tmp_path)
    config["data"] = {**config["data"], "train_file": train, "val_file": val}
    path = tmp_path / "poisoned.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def fit(cwd: Path, config: str, *extra: str):
    cwd.mkdir(parents=True, exist_ok=True)
    return smoke_fit(cwd, "--config", config, *extra)


def _skips(run_dir: Path) -> float:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (state,) = [s for k, s in ckpt["callbacks"].items() if k.startswith("GradientHealth")]
    return state["skipped_steps"], [entry["id"] for entry in state["skip_list"]]


def test_a_named_sample_is_left_out_from_the_next_epoch_and_written_down(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = fit(tmp_path / "a", config)  # 12 steps: 3 epochs
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "a" / "runs" / "smoke" / "version_0"
    skipped, ids = _skips(run_dir)
    assert ids == [POISONED] and skipped == 1  # tripped once, in epoch 0; never fed again
    written = json.loads((run_dir / "skip_list.json").read_text())
    assert written["sample_ids"] == [POISONED] and "line 6" in written["samples"][0]["record"]
    assert "left out         1 training samples (skip list), ids [5]" in result.stdout


def test_resume_with_a_skip_list_ends_like_the_uninterrupted_run(tmp_path: Path) -> None:
    config = _config(tmp_path)
    straight = fit(tmp_path / "straight", config)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = adapter_weights(tmp_path / "straight" / "runs" / "smoke" / "version_0")

    # interrupted mid-epoch 1 (the trip was in epoch 0), resumed: the sample stays out, the order is kept
    first = fit(tmp_path / "resumed", config, interrupt_at(signal.SIGTERM, 5))
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    again = fit(tmp_path / "resumed", config, "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-3000:]
    got = adapter_weights(tmp_path / "resumed" / "runs" / "smoke" / "version_1")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert _skips(tmp_path / "resumed" / "runs" / "smoke" / "version_1") == (1, [POISONED])


def test_a_later_fit_given_the_list_never_trains_on_the_sample(tmp_path: Path) -> None:
    config = _config(tmp_path)
    skip_list = tmp_path / "skip_list.json"
    skip_list.write_text(json.dumps({"sample_ids": [POISONED]}))
    given = fit(tmp_path / "given", config, "--data.skip_list", str(skip_list))
    assert given.returncode == 0, given.stderr[-3000:]
    assert _skips(tmp_path / "given" / "runs" / "smoke" / "version_0") == (0, [])  # no trip: never fed
    assert "left out         1 training samples (skip list), ids [5]" in given.stdout
