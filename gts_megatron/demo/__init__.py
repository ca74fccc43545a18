"""`gts demo`: the whole pipeline on the embedded corpus. Until the data, probe and plan stages
land it runs their first stage, dense pretraining, on synthetic tokens."""
from __future__ import annotations

import argparse
from importlib import resources


def demo_args(args: argparse.Namespace) -> argparse.Namespace:
    """The pretrain arguments of the demo: its packaged config, shortened by --quick."""
    config = str(resources.files("gts_megatron") / "configs" / "demo.yaml")
    overrides = ["train.steps=20", "train.save_interval=10"] if args.quick else []
    return argparse.Namespace(**{**vars(args), "config": args.config or config,
                                 "set": overrides + list(args.set), "command": "pretrain"})
