"""Generation with LoRA folded into the weights (sft_lightning.models.merged_lora): the same answers as the
unmerged model, and training that continues bit-for-bit as if nothing had been generated."""

from __future__ import annotations

import copy

import torch

from sft_lightning.data.batching import TrainCollator
from sft_lightning.data.datamodule import SFTDataModule
from sft_lightning.evaluation.generation import greedy_generate
from sft_lightning.loss import supervised_loss_sum
from sft_lightning.models.loading import TINY_RANDOM
from sft_lightning.models.merged_lora import merged_lora_weights
from sft_lightning.module import SFTModule


def _module_and_batches() -> tuple[SFTModule, list[dict[str, torch.Tensor]], dict]:
    torch.manual_seed(0)
    data = SFTDataModule(train_size=48, val_size=8, tokenizer=TINY_RANDOM, max_length=256, significant_digits=3, batch_size=8)
    data.setup("fit")
    module = SFTModule(model=TINY_RANDOM, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_new_tokens=6)
    module.configure_model()
    collate = TrainCollator(data.tokenizer.pad_token_id)
    batches = [collate(data.train_examples[i : i + 8]) for i in range(0, 48, 8)]
    prompts = next(iter(data.val_dataloader()))
    return module, batches, prompts


def _train(module: SFTModule, optimizer: torch.optim.Optimizer, batches: list[dict[str, torch.Tensor]]) -> None:
    for batch in batches:
        loss, n = supervised_loss_sum(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_training_continues_bit_for_bit_after_merged_generation() -> None:
    module, batches, prompts = _module_and_batches()
    twin = copy.deepcopy(module)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (module, twin)]
    _train(module, opts[0], batches[:3])
    _train(twin, opts[1], batches[:3])
    weights_before = {n: p.detach().clone() for n, p in module.named_parameters()}
    module.generate_texts(prompts["prompt_ids"], prompts["prompt_mask"])  # merged (the default)
    for name, param in module.named_parameters():  # the very same tensors, bit for bit
        assert torch.equal(param, weights_before[name]), name
    _train(module, opts[0], batches[3:])
    _train(twin, opts[1], batches[3:])
    for (name, a), (_, b) in zip(module.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(opts[0].state.values(), opts[1].state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_merged_weights_compute_what_the_lora_branches_compute() -> None:
    module, batches, prompts = _module_and_batches()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=5e-2)
    _train(module, opt, batches)  # a LoRA update that is not zero
    module.eval()
    ids, mask = prompts["prompt_ids"], prompts["prompt_mask"]
    with torch.no_grad():
        plain = module.model(input_ids=ids, attention_mask=mask).logits
        with merged_lora_weights(module.model) as merged:
            folded = module.model(input_ids=ids, attention_mask=mask).logits
        restored = module.model(input_ids=ids, attention_mask=mask).logits
    assert merged == 7 * module.model.config.num_hidden_layers  # every adapted projection of every layer
    assert torch.allclose(plain, folded, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), module.model.disable_adapter():
        base = module.model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(plain, base, atol=1e-2)  # the LoRA update mattered
    assert torch.equal(plain, restored)
    greedy_generate(module.model, ids, mask, 3, module.tokenizer.eos_token_id)  # and it still generates after
