"""torch.compile of the decoder layers: same names, same numbers, eager generation, clean fallback."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from sft_lightning import module as sft_module
from sft_lightning.models import compile as sft_compile
from sft_lightning.models.tiny import build_tiny_llama
from sft_lightning.module import SFTModule


def test_without_a_working_compiler_it_warns_and_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sft_compile, "compiler_works", lambda: "CppCompileError: no g++")
    model = build_tiny_llama()
    with pytest.warns(UserWarning, match=r"CppCompileError: no g\+\+.*Fix: install a C\+\+ compiler"):
        assert sft_compile.compile_decoder_layers(model) == 0
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def test_eager_block_runs_compiled_modules_without_compiling() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    block = _Block()  # a module defined outside torch: dynamo skips torch's own containers at top level
    block.compile(backend=recording_backend, dynamic=True)
    x = torch.randn(3, 4)
    with sft_compile.eager():
        for _ in range(3):
            block(x)
    assert graphs == []
    block(x)  # outside the block it compiles as usual
    assert len(graphs) == 1


@pytest.mark.slow
def test_compiled_training_matches_eager_and_keeps_parameter_names() -> None:
    def losses(compile: bool) -> tuple[list[float], set[str]]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        module = SFTModule(model="tiny-random", lora_r=4, lora_dropout=0.0, compile=compile, attn_implementation="eager")
        module.configure_model()
        torch.manual_seed(1)
        for param in module.parameters():
            if param.requires_grad:
                param.data.normal_(0, 0.05)
        optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
        ids = torch.randint(3, 60, (4, 12))
        labels = ids.clone()
        labels[:, :6] = -100
        mask = torch.ones_like(ids)
        mask[0, :3] = 0  # padding in one row
        out = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = module.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            out.append(float(loss))
        return out, set(module.state_dict())

    eager_losses, eager_names = losses(compile=False)
    compiled_losses, compiled_names = losses(compile=True)
    assert compiled_names == eager_names  # checkpoints and exports are unchanged by compilation
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled_losses[-1] < compiled_losses[0]


@pytest.mark.parametrize(("stage", "compiled"), [(TrainerFn.FITTING, True), (TrainerFn.VALIDATING, False), (TrainerFn.PREDICTING, False)])
def test_only_fit_compiles(monkeypatch: pytest.MonkeyPatch, tmp_path, stage: TrainerFn, compiled: bool) -> None:
    calls: list[nn.Module] = []
    monkeypatch.setattr(sft_module, "compile_decoder_layers", lambda model: calls.append(model) or 0)
    module = SFTModule(model="tiny-random", compile=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.state.fn = stage
    module.trainer = trainer
    module.configure_model()
    assert len(calls) == int(compiled)
