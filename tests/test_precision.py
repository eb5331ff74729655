"""The precision is the machine's: the choice for every CPU kind, injected, without the hardware."""

from __future__ import annotations

import pytest
import torch
from helpers.paths import REPO, SMOKE

import sft_lightning.cli.main as cli
from sft_lightning.evaluation.answering import answer_precision
from sft_lightning.models.precision import (
    CpuFacts,
    base_dtype_for,
    choose_precision,
    measure_bf16_speedup,
    probe_cpu,
    slow_precision_warning,
)

AMX = CpuFacts("AVX512", native_bf16=True, bf16_speedup=6.2)
AVX512_BF16 = CpuFacts("AVX512", native_bf16=True, bf16_speedup=2.3)
AVX2 = CpuFacts("AVX2", native_bf16=False)
NATIVE_BUT_SLOW = CpuFacts("AVX512", native_bf16=True, bf16_speedup=0.9)


@pytest.mark.parametrize(
    ("accelerator", "facts", "precision", "base_dtype"),
    [
        ("cpu", AMX, "bf16-mixed", "bfloat16"),
        ("cpu", AVX512_BF16, "bf16-mixed", "bfloat16"),
        ("cpu", AVX2, "32-true", "float32"),
        ("cpu", NATIVE_BUT_SLOW, "32-true", "float32"),
        ("cuda", None, "16-mixed", "float32"),
        ("mps", None, "32-true", "float32"),
    ],
    ids=["amx", "avx512bf16", "avx2", "native-but-slower", "cuda", "other"],
)
def test_choice_for_every_kind(accelerator: str, facts: CpuFacts | None, precision: str, base_dtype: str) -> None:
    choice = choose_precision(accelerator, facts)
    assert (choice.precision, choice.base_dtype) == (precision, base_dtype)
    assert choice.reason and choice.precision in choice.announcement()


def test_the_reason_names_what_the_cpu_lacks() -> None:
    assert "no native bf16" in choose_precision("cpu", AVX2).reason
    assert "AVX2" in choose_precision("cpu", AVX2).reason
    assert "6.2x" in choose_precision("cpu", AMX).reason


@pytest.mark.parametrize(
    ("precision", "facts", "warned"),
    [
        ("bf16-mixed", AVX2, True),
        ("16-mixed", AVX2, True),  # Lightning runs it as bf16-mixed on a CPU
        ("bf16-true", AVX2, True),
        ("32-true", AVX2, False),
        ("32", AVX2, False),
        ("bf16-mixed", AVX512_BF16, False),
        ("bf16-mixed", AMX, False),
    ],
)
def test_a_user_set_precision_is_warned_only_where_it_is_slow(precision: str, facts: CpuFacts, warned: bool) -> None:
    warning = slow_precision_warning(precision, "cpu", facts)
    assert (warning is not None) is warned
    if warned:
        assert "~100x slower" in warning and "--trainer.precision 32-true" in warning


def test_no_cpu_warning_on_cuda() -> None:
    assert slow_precision_warning("16-mixed", "cuda", None) is None


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", "bfloat16"), ("bf16-true", "bfloat16"), ("32-true", "float32"), ("16-mixed", "float32"), (None, "float32")]
)
def test_base_dtype_follows_the_precision(precision: str | None, dtype: str) -> None:
    assert base_dtype_for(precision) == dtype


def test_the_probe_agrees_with_torch() -> None:
    facts = probe_cpu()
    assert facts.native_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert facts.capability == torch.backends.cpu.get_cpu_capability()
    assert (facts.bf16_speedup is not None) == facts.native_bf16
    assert measure_bf16_speedup((8, 16, 8), repeats=1) > 0


def _build(monkeypatch: pytest.MonkeyPatch, facts: CpuFacts, *args: str) -> cli.SFTLightningCLI:
    monkeypatch.setattr(cli, "probe_cpu", lambda: facts)
    return cli.build_cli(["--config", SMOKE, *args], run=False)


@pytest.mark.parametrize(("facts", "precision", "dtype"), [(AVX2, "32-true", "float32"), (AVX512_BF16, "bf16-mixed", "bfloat16")])
def test_cli_fills_in_the_machines_precision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], facts: CpuFacts, precision: str, dtype: str
) -> None:
    built = _build(monkeypatch, facts, "--trainer.precision", "null")
    assert built.trainer.precision == precision
    assert built.config.trainer.precision == precision  # what the run's config.yaml records
    assert f"precision: {precision}, frozen base {dtype}" in capsys.readouterr().err
    built.model.trainer = built.trainer
    assert built.model.resolved_base_dtype() == dtype


def test_cli_keeps_a_user_precision_and_warns_where_it_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="no native bf16"):
        built = _build(monkeypatch, AVX2, "--trainer.precision", "bf16-mixed")
    assert built.trainer.precision == "bf16-mixed"


def test_shipped_cpu_config_leaves_precision_to_the_machine() -> None:
    import yaml

    embedded = yaml.safe_load((REPO / "configs" / "embedded.yaml").read_text())
    assert "precision" not in embedded["trainer"]
    assert "base_dtype" not in embedded["model"]


@pytest.mark.parametrize(("facts", "answered"), [(AVX2, "32-true"), (AVX512_BF16, "bf16-mixed")])
def test_ask_answers_a_bf16_run_in_the_machines_precision(monkeypatch: pytest.MonkeyPatch, facts: CpuFacts, answered: str) -> None:
    import sft_lightning.evaluation.answering as answering

    monkeypatch.setattr(answering, "probe_cpu", lambda: facts)
    precision, note = answer_precision("bf16-mixed", "cpu")
    assert precision == answered
    assert (note is not None) == (answered != "bf16-mixed")


@pytest.mark.parametrize(
    ("facts", "flags", "kind"),
    [
        (AMX, {"avx512_bf16", "amx_bf16"}, "cpu-amx"),
        (AVX512_BF16, {"avx512_bf16"}, "cpu-avx512bf16"),
        (AVX2, {"avx2"}, "cpu-avx2"),
        (AVX2, {"avx512_bf16", "amx_bf16"}, "cpu-avx2"),  # an AMX CPU limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)
        (CpuFacts("DEFAULT", native_bf16=False), set(), "cpu"),
    ],
)
def test_cpu_kind(facts: CpuFacts, flags: set[str], kind: str) -> None:
    from sft_lightning.models.precision import cpu_kind

    assert cpu_kind(facts, flags) == kind
