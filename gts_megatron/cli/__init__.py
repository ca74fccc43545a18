"""The `gts` command: the registry (registry.py) names every command and the module under
commands/ that runs it; flags.py turns typed config sections into --flags."""
from gts_megatron.cli.main import main

__all__ = ["main"]
