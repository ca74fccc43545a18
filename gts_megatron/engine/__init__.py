"""The training loop shared by every training stage, with checkpoints, metrics and resume."""
