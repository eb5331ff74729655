"""The command line: the commands, progress, interrupts, checkpoint files and the exported adapter."""
