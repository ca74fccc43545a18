"""`gts demo`: the whole pipeline on the embedded corpus. Until the probe and plan stages land it
runs the data stages (demo corpus, tokenizer, token datasets) and dense pretraining on them."""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path


def prepare_demo_data(run_dir: Path) -> Path:
    """The demo corpus and its token datasets under ``run_dir`` (each skipped when up to date)."""
    from gts_megatron.config import PrepareConfig
    from gts_megatron.data.demo_corpus import build_demo_corpus
    from gts_megatron.data.prepare import prepare

    build_demo_corpus(run_dir / "corpus")
    prepare(PrepareConfig(corpus=str(run_dir / "corpus")), run_dir / "data")
    return run_dir / "data"


def demo_args(args: argparse.Namespace) -> argparse.Namespace:
    """The pretrain arguments of the demo: its packaged config on the demo data, shortened by --quick."""
    config = str(resources.files("gts_megatron") / "configs" / "demo.yaml")
    overrides = [f"data.path={Path(args.run_dir) / 'data'}"]
    overrides += ["train.steps=20", "train.save_interval=10"] if args.quick else []
    return argparse.Namespace(**{**vars(args), "config": args.config or config,
                                 "set": overrides + list(args.set), "command": "pretrain"})
