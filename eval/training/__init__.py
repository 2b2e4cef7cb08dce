"""Pretraining runs: configuration, data module, the loop, checkpoints, exact resume, progress."""
