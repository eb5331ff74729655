"""Every bad input through the `sft-lightning` command line: one clean `error: ...` line naming the cause and the
fix, a non-zero exit, no traceback, and (for bad data) no model loaded.

Most cases call the CLI's ``main`` in this process (a console script start costs seconds of imports each); a few
run the real console script, so that what a user's shell sees is covered too (``real_process=True``, and the
checkpoint fixtures). "No model loaded" is checked with a probe, not guessed from timing: in this process
``sft_lightning.module.load_model`` and ``sft_lightning.models.tiny.build_tiny_llama`` are wrapped; in a console
script a ``sitecustomize`` on its PYTHONPATH wraps them the same way. Either prints ``PROBE_MARKER`` to stderr
when called. A real fit through each (``test_the_probe_fires_on_a_model_load`` and the checkpoint fixture) is the
positive control that the probe fires.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cli import TRACEBACK, run_main
from helpers.paths import CLI, SMOKE

import sft_lightning.models.tiny
import sft_lightning.module

PROBE_MARKER = "[cli-error-probe] base model load requested"

PROBE_SITECUSTOMIZE = f'''
import sys

def _wrap(fn):
    def probed(*args, **kwargs):
        print({PROBE_MARKER!r}, file=sys.stderr, flush=True)
        return fn(*args, **kwargs)
    return probed

try:
    import sft_lightning.models.loading as _models
    import sft_lightning.models.tiny as _tiny
except Exception as exc:  # never break the CLI; the tests then fail on the missing marker
    print(f"[cli-error-probe] not installed: {{exc!r}}", file=sys.stderr, flush=True)
else:
    _models.load_model = _wrap(_models.load_model)
    _tiny.build_tiny_llama = _wrap(_tiny.build_tiny_llama)
'''


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]

    @property
    def model_loaded(self) -> bool:
        return PROBE_MARKER in self.stderr


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe")
    (path / "sitecustomize.py").write_text(PROBE_SITECUSTOMIZE)
    return path


def _run(probe_dir: Path, cwd: Path, *args: str, timeout: int = 240) -> CLIResult:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(probe_dir), env.get("PYTHONPATH", "")) if p)
    start = time.monotonic()
    proc = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return CLIResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def _probed(fn):
    def probed(*args, **kwargs):
        print(PROBE_MARKER, file=sys.stderr, flush=True)
        return fn(*args, **kwargs)

    return probed


def _run_here(cwd: Path, args: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CLIResult:
    """``main(args)`` in this process, in ``cwd``, with the probe on the model loaders; the environment the run
    changes (Lightning's seed and rank variables) is put back."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sft_lightning.module, "load_model", _probed(sft_lightning.module.load_model))
    monkeypatch.setattr(sft_lightning.models.tiny, "build_tiny_llama", _probed(sft_lightning.models.tiny.build_tiny_llama))
    environ = dict(os.environ)
    start = time.monotonic()
    try:
        done = run_main(list(args), capsys)
    finally:
        os.environ.clear()
        os.environ.update(environ)
    return CLIResult(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


@pytest.fixture
def cli(probe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``cli(*overrides)`` runs ``sft-lightning fit --config smoke.yaml *overrides`` in tmp_path: in this process,
    or with ``real_process=True`` as the console script."""

    def run(*overrides: str, command: str = "fit", timeout: int = 240, real_process: bool = False) -> CLIResult:
        args = (command, "--config", SMOKE, *overrides)
        if real_process:
            return _run(probe_dir, tmp_path, *args, timeout=timeout)
        return _run_here(tmp_path, args, capsys, monkeypatch)

    return run


def test_the_probe_fires_on_a_model_load(cli) -> None:
    result = cli("--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0")
    assert result.returncode == 0, result.output[-3000:]
    assert result.model_loaded, "the probe did not fire on a real fit: the no-model-loaded checks would be vacuous"


def assert_clean_error(result: CLIResult, *fragments: str) -> str:
    """Non-zero exit, no traceback, exactly one `error:` line holding every fragment; returns it."""
    tail = result.output[-4000:]
    assert result.returncode != 0, f"expected failure, exit 0:\n{tail}"
    assert TRACEBACK not in result.output, f"traceback instead of a clean message:\n{tail}"
    assert len(result.error_lines) == 1, f"expected one 'error: ...' line on stderr:\n{tail}"
    line = result.error_lines[0]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_data_error(result: CLIResult, cwd: Path, *fragments: str) -> str:
    """A clean error, exit 2, raised before any model was built and before any run output."""
    line = assert_clean_error(result, *fragments)
    assert result.returncode == 2, result.output[-2000:]
    assert not result.model_loaded, "the base model was loaded before the data error was reported"
    assert not list(cwd.rglob("*.ckpt")) and not list(cwd.rglob("config.yaml")), sorted(cwd.rglob("*"))
    assert "sft-lightning fit summary" not in result.stdout
    assert result.seconds < 60, f"data error took {result.seconds:.1f}s"
    return line


def write_json(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


# ----------------------------------------------------------------------------------- data


def test_missing_data_file(cli, tmp_path: Path) -> None:
    result = cli("--data.train_file", "no_such_file.json", real_process=True)  # what a shell sees
    assert_data_error(result, tmp_path, "data file not found: no_such_file.json", "Fix: check the path")


def test_invalid_json_names_line_and_column(cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  ["Convert 2 km to m.", 2000],\n  ["Convert 3 km to m." 3000]\n]\n')
    result = cli("--data.train_file", str(path))
    assert_data_error(result, tmp_path, f"{path}: invalid JSON at line 3, column 25", "Expecting ',' delimiter")


def test_json_record_that_is_not_a_pair(cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "triple.json", [["Convert 2 km to m.", 2000], ["Convert 3 km to m.", 3000, "m"]])
    result = cli("--data.train_file", path)
    assert_data_error(result, tmp_path, f"{path}: record 1 is not a [question, answer] pair", "3000, 'm'")


def test_jsonl_record_without_answer_field(cli, tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"question": "Convert 2 km to m.", "answer": 2000}\n{"question": "Convert 3 km to m."}\n')
    result = cli("--data.train_file", str(path))
    assert_data_error(result, tmp_path, f"{path}: line 2: missing field 'answer'")


def test_answer_neither_number_nor_text(cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "words.json", [["Convert 2 km to m.", 2000], ["Convert 3 km to m.", ["three thousand"]]])
    result = cli("--data.train_file", path)
    assert_data_error(result, tmp_path, f"{path}: record 1: answer must be a number or a non-empty text, got ['three thousand']")


@pytest.mark.parametrize(("literal", "shown"), [("NaN", "nan"), ("Infinity", "inf")])
def test_non_finite_answer(cli, tmp_path: Path, literal: str, shown: str) -> None:
    path = tmp_path / "nonfinite.json"
    path.write_text(f'[["Convert 2 km to m.", 2000], ["Convert 3 km to m.", {literal}]]')
    result = cli("--data.train_file", str(path))
    assert_data_error(
        result, tmp_path,
        f"{path}: record 1: answer must be finite, got {shown}.",
        "Fix: remove the record or correct its answer.",
    )


def test_empty_record_set(cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "empty.json", [])
    result = cli("--data.train_file", path)
    assert_data_error(result, tmp_path, f"{path}: contains no records.", "Fix: add at least one question/answer pair.")


def _records_with_long_question(index: int) -> list[list[object]]:
    records: list[list[object]] = [[f"Convert {i} km to m.", i * 1000] for i in range(1, 21)]
    records[index][0] = f"Convert {index + 1} km to m. " + "Please think carefully. " * 10
    return records


def test_question_too_long_for_max_length(cli, tmp_path: Path) -> None:
    # 20 records, smoke val_size 16: records 0-3 train, 4-19 are held out for validation.
    train = write_json(tmp_path / "long.json", _records_with_long_question(2))
    result = cli("--data.train_file", train, "--data.max_length", "80")
    assert_data_error(
        result, tmp_path,
        f"{train} item 3 needs",  # the place in the file, 1-based, as in every data message
        "more than data.max_length=80, so its answer would be truncated",
        "Question starts: 'Convert 3 km to m. Please think",
        "Fix: shorten the question or raise --data.max_length.",
    )


def test_question_too_long_in_held_out_part_names_file_record(cli, tmp_path: Path) -> None:
    train = write_json(tmp_path / "long.json", _records_with_long_question(5))
    result = cli("--data.train_file", train, "--data.max_length", "80")
    assert_data_error(result, tmp_path, f"{train} item 6 needs", "Fix: shorten the question")


def test_unknown_unit_in_generator_config(cli, tmp_path: Path) -> None:
    result = cli("--data.units", '{"length": ["furlongz"]}')
    line = assert_data_error(result, tmp_path, "data.units: unknown length unit 'furlongz'")
    # The fix is the list of what is accepted.
    accepted = line.split("accepted length spellings:")[1]
    assert "kilometer" in accepted and "mile" in accepted


def test_unknown_family_in_generator_config(cli, tmp_path: Path) -> None:
    result = cli("--data.families", "[length, smell]")
    assert_data_error(
        result, tmp_path,
        "data.families: unknown unit family 'smell'",
        "expected one of: length, mass, time",
    )


def test_generator_config_too_narrow_for_requested_size(cli, tmp_path: Path) -> None:
    result = cli("--data.families", "[temperature]", "--data.units", '{"temperature": ["degC", "degF"]}',
                 "--data.train_size", "100000")
    assert_data_error(result, tmp_path, "cannot generate", "widen families/units or ask for fewer")


# ----------------------------------------------------------------------------- config


def test_unknown_config_key_is_named(cli, tmp_path: Path) -> None:
    result = cli("--model.lora_rank", "8", real_process=True)  # jsonargparse's own error path, as a shell sees it
    assert result.returncode != 0
    assert TRACEBACK not in result.output, result.output[-3000:]
    assert "lora_rank" in result.stderr, result.stderr[-3000:]
    assert not result.model_loaded


# ------------------------------------------------------------------------------ model


def test_model_path_that_does_not_exist(cli, tmp_path: Path) -> None:
    result = cli("--model.model", "./no/such/dir")
    assert_clean_error(result, "model path not found: ./no/such/dir.", "Fix: check the path")
    assert result.returncode == 2 and not result.model_loaded


def test_hub_id_offline_fails_fast(cli, tmp_path: Path) -> None:
    # a process of its own: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    result = cli("--model.model", "SomeOrg/some-model", real_process=True)
    assert_clean_error(
        result,
        "could not load model 'SomeOrg/some-model'",
        "the hub is unreachable (offline)",
        "Fix: use 'embedded'",
    )
    assert result.returncode == 2 and not result.model_loaded
    assert result.seconds < 30, f"offline hub id took {result.seconds:.1f}s to fail"


def test_gguf_path_that_does_not_exist(cli, tmp_path: Path) -> None:
    result = cli("--model.model", "no_such_model.gguf")
    assert_clean_error(result, "GGUF file not found: no_such_model.gguf.", "Fix: check the path")
    assert result.returncode == 2 and not result.model_loaded


def test_adapter_directory_without_adapter_config(cli, tmp_path: Path) -> None:
    adapter = tmp_path / "not_an_adapter"
    adapter.mkdir()
    (adapter / "README.md").write_text("nothing here")
    result = cli("--model.adapter", str(adapter))
    assert_clean_error(result, f"adapter directory {adapter} has no adapter_config.json.", "Fix: pass the 'adapter' directory")
    assert result.returncode == 2 and not result.model_loaded


# ------------------------------------------------------------------------- checkpoint


@pytest.fixture(scope="module")
def lora_r4_checkpoint(probe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("r4_run")
    fit = _run(probe_dir, cwd, "fit", "--config", SMOKE, "--model.lora_r", "4", "--trainer.max_steps", "2")
    assert fit.returncode == 0, fit.output[-3000:]
    assert fit.model_loaded, "probe did not fire on a real fit: the no-model-loaded checks would be vacuous"
    ckpt = cwd / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), sorted(cwd.rglob("*"))
    return ckpt


@pytest.fixture(scope="module")
def validate_r4_checkpoint_with_r8(probe_dir: Path, lora_r4_checkpoint: Path, tmp_path_factory) -> CLIResult:
    cwd = tmp_path_factory.mktemp("r8_validate")
    return _run(probe_dir, cwd, "validate", "--config", SMOKE, "--model.lora_r", "8", "--ckpt_path", str(lora_r4_checkpoint))


def test_checkpoint_from_different_lora_config_has_no_shape_traceback(validate_r4_checkpoint_with_r8: CLIResult) -> None:
    result = validate_r4_checkpoint_with_r8
    assert TRACEBACK not in result.output, result.output[-3000:]
    assert "size mismatch" not in result.output
    if result.returncode != 0:
        assert_clean_error(result, "lora_r")


def test_checkpoint_from_different_lora_config_is_reported(validate_r4_checkpoint_with_r8: CLIResult) -> None:
    result = validate_r4_checkpoint_with_r8
    assert TRACEBACK not in result.output, result.output[-3000:]
    told = [line for line in result.stderr.splitlines() if "lora_r" in line and "checkpoint" in line]
    assert told, f"exit {result.returncode}; nothing on stderr says the checkpoint's lora_r differs from 8"
    if result.returncode != 0:
        assert_clean_error(result, "lora_r")
