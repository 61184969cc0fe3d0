"""The shared training loop and checkpoints used by every family's ``train`` command."""
