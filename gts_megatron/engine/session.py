"""The frame every training stage runs in: process groups up, config recorded, groups down."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import RunConfig, dump_config
from gts_megatron.runtime.distributed import Runtime, init_runtime, shutdown_runtime


@contextlib.contextmanager
def training_session(cfg: RunConfig, run_dir: Path, banner: str) -> Iterator[Runtime]:
    """Start the runtime, write ``<run>/config.yaml`` and print ``banner`` with the layout (main
    rank); tear the process groups down however the stage ends. Collective."""
    runtime = init_runtime(cfg.parallel, cfg.train.seed)
    try:
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            pipeline = f" x PP {runtime.pipeline}" if runtime.pipeline > 1 else ""
            print(f"{banner}; world {runtime.env.world_size} = TP {runtime.tensor}{pipeline} x DP {runtime.data}"
                  f"{f' (EP {runtime.expert})' if runtime.expert > 1 else ''}", flush=True)
        yield runtime
    finally:
        shutdown_runtime()
