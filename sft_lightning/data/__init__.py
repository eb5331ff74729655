"""Data: the datamodule, records and the file formats they come in, prompts, batching."""
