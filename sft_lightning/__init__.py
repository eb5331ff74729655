"""sft-lightning: LoRA fine-tuning of small causal LMs with PyTorch Lightning."""
