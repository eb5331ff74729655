"""Every argument of every command, given a wrong value, ends in one clear error: exit 2, no
traceback, and a message that names the argument.

The arguments come from the parsers themselves (LightningCLI's subcommand parsers, the argparse
parsers of ``ask`` and ``report``), so an argument added tomorrow is covered tomorrow: it gets the
wrong value its type calls for, or, when no value of its type is wrong, a value of another type.
``test_no_argument_is_left_without_a_case`` fails when the generic rules cannot build a case.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import TRACEBACK, run_main
from helpers.paths import SMOKE
from helpers.runs import memorised_run

from sft_lightning.cli import ask, report
from sft_lightning.cli.main import SFTLightningCLI
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.module import SFTModule

SUBCOMMANDS = ("fit", "validate", "predict")
# Not values: help and config-file plumbing, and the data keys linked from model.* (set there).
SKIPPED = {"help", "config", "print_config", "trainer", "model", "data", "data.tokenizer", "data.cache_dir"}
# Every integer is a valid value of these: a non-integer is the wrong value.
ANY_INT = {"seed_everything", "data.seed"}
# Values that are wrong for reasons of meaning, not type.
SPECIAL = {
    "model.model": "/no/such/model",
    "model.adapter": "/no/such/adapter",
    "model.cache_dir": "/dev/null/cache",
    "model.export_dir_name": "../outside",
    "model.target_modules": "[]",
    "data.train_file": "/no/such/train.json",
    "data.val_file": "/no/such/val.json",
    "data.predict_file": "/no/such/questions.txt",
    "data.extra_val_files": "{mine: /no/such/file.jsonl}",
    "data.families": "[lenght]",
    "data.units": "{length: [kilometr]}",
    "data.conventions": "{ton: imperial}",
    "data.task": "sft_lightning.tasks.NoSuchTask",
    "data.skip_list": "/no/such/skip_list.json",
    "trainer.default_root_dir": "/dev/null/runs",
    "trainer.devices": "-3",
    "trainer.max_time": "not-a-duration",
    "trainer.val_check_interval": "-1.5",
    "trainer.gradient_clip_algorithm": "sideways",
    "trainer.model_registry": "",
    "ckpt_path": "/no/such/last.ckpt",
    "budget": "/no/such/budget.yaml",  # the group's own argument: a config file of budget.* settings
}


class _Captured(Exception):
    pass


class _ParserOnly(SFTLightningCLI):
    """Builds the CLI's parser exactly as ``sft-lightning`` does, then stops before parsing."""

    def parse_arguments(self, parser: Any, args: Any) -> None:
        raise _Captured(parser)


def lightning_arguments(subcommand: str) -> dict[str, Any]:
    """``{dest: type hint}`` of every value-taking argument of a LightningCLI subcommand."""
    try:
        _ParserOnly(SFTModule, SFTDataModule, args=[subcommand])
    except _Captured as captured:
        parser = captured.args[0]
    sub = parser._subcommands_action._name_parser_map[subcommand]
    found = {}
    for action in sub._actions:
        if action.dest in SKIPPED or action.dest.endswith(".help") or action.nargs == 0:
            continue
        found[action.dest] = getattr(action, "_typehint", None)
    return found


def wrong_value(dest: str, hint: Any) -> str | None:
    """A value the argument must refuse, from its type; None when the rules have none."""
    if dest in SPECIAL:
        return SPECIAL[dest]
    if dest in ANY_INT:
        return "twelve"
    if typing.get_origin(hint) is typing.Literal:
        return "bogus"
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if all(typing.get_origin(o) is typing.Literal or o is bool for o in options):
        return "bogus"
    if any(o is int for o in options) or any(o is float for o in options):
        return "-7"
    if any(isinstance(o, type) and o.__module__.split(".")[0] in ("lightning", "torch") for o in options):
        return "no.such.Class"
    return None


def cases() -> list[tuple[str, str, str]]:
    out = []
    for subcommand in SUBCOMMANDS:
        for dest, hint in lightning_arguments(subcommand).items():
            value = wrong_value(dest, hint)
            if value is not None:
                out.append((subcommand, dest, value))
    return out


CASES = cases()


def test_no_argument_is_left_without_a_case() -> None:
    missing = [
        (sub, dest)
        for sub in SUBCOMMANDS
        for dest, hint in lightning_arguments(sub).items()
        if wrong_value(dest, hint) is None
    ]
    assert not missing, f"no wrong value for {missing}: add a rule or a SPECIAL entry"
    assert len(CASES) > 150


def _names_argument(message: str, dest: str) -> bool:
    leaf = dest.rsplit(".", 1)[-1]
    return dest in message or f"`{leaf}`" in message or f"'{leaf}'" in message or leaf in message


@pytest.mark.parametrize(("subcommand", "dest", "value"), CASES, ids=[f"{s}-{d}" for s, d, _ in CASES])
def test_wrong_value_is_one_clear_error(subcommand: str, dest: str, value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--data.predict_file", str(Path(SMOKE).parent.parent / "docs" / "questions.txt")] if subcommand == "predict" and dest != "data.predict_file" else []
    result = run_main([subcommand, "--config", SMOKE, *extra, f"--{dest}", value], capsys)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert TRACEBACK not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, output[-2000:]
    assert _names_argument(result.stderr, dest), result.stderr[-2000:]


# ------------------------------------------------------------------ ask and report (argparse)


def _argparse_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.nargs != 0 and a.dest != "help"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return memorised_run(tmp_path_factory.mktemp("surface"))


def ask_cases(run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Per ask argument: argv with that argument (only) wrong, and what the message must name."""
    (tmp / "garbage.ckpt").write_bytes(b"not a checkpoint")
    (tmp / "a-file").write_text("x")
    q, good = "How many m in 1 km?", ["--run", str(run)]
    return {
        "questions": (["  ", *good], "empty question"),
        "adapter": ([q, "--adapter", str(tmp / "nope")], "does not exist"),
        "checkpoint": ([q, "--checkpoint", str(tmp / "garbage.ckpt")], "could not read checkpoint"),
        "run": ([q, "--run", str(tmp / "nope")], "does not exist"),
        "model": ([q, *good, "--model", str(tmp / "no-such-model")], "model"),
        "cache_dir": ([q, *good, "--cache-dir", str(tmp / "a-file")], "--cache-dir"),
        "max_new_tokens": ([q, *good, "--max-new-tokens", "0"], "--max-new-tokens"),
        "device": ([q, *good, "--device", "toaster"], "--device"),
    }


@pytest.mark.slow
def test_every_ask_argument_refuses_a_wrong_value(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases_ = ask_cases(trained_run, tmp_path)
    assert set(cases_) == _argparse_dests(ask.build_parser()), "a new ask argument needs a case here"
    for dest, (argv, named) in cases_.items():
        result = run_main(["ask", *argv], capsys)
        assert result.returncode == 2 and TRACEBACK not in result.stderr, (dest, result.stderr[-2000:])
        assert named in result.stderr, (dest, result.stderr[-2000:])


@pytest.mark.slow
def test_every_report_argument_refuses_a_wrong_value(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases_ = {
        "run_dir": ([str(tmp_path / "nope")], "does not exist"),
        "output": ([str(trained_run), "--output", "/dev/null/report.png"], "--output"),
    }
    assert set(cases_) == _argparse_dests(report.build_parser()), "a new report argument needs a case here"
    for dest, (argv, named) in cases_.items():
        result = run_main(["report", *argv], capsys)
        assert result.returncode == 2 and TRACEBACK not in result.stderr, (dest, result.stderr[-2000:])
        assert named in result.stderr, (dest, result.stderr[-2000:])
