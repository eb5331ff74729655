"""A tiny model directory whose tokenizer has a chat template (ChatML, as SmolLM2's), built offline in seconds."""

from __future__ import annotations

from pathlib import Path

from sft_lightning.models.tiny import build_char_tokenizer, build_tiny_llama

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_tokenizer():
    """The tiny model's character tokenizer with a ChatML chat template."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHATML
    return tokenizer


def save_chat_model(directory: Path) -> Path:
    """The tiny random Llama and ``chat_tokenizer`` saved as a Hugging Face directory (``--model.model DIR``)."""
    build_tiny_llama().save_pretrained(directory)
    chat_tokenizer().save_pretrained(directory)
    return directory
