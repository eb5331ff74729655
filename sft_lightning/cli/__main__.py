"""``python -m sft_lightning.cli``: the same as the ``sft-lightning`` command."""

from sft_lightning.cli.main import main

main()
