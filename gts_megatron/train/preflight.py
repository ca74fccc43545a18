"""What can be checked about a training run before any process starts (locally or on Slurm)."""
from __future__ import annotations

from pathlib import Path

from gts_megatron.config import RunConfig


def preflight(cfg: RunConfig, world_size: int) -> None:
    """Refuse, in one line, a run that would fail in its workers: a parallel layout the world
    size cannot hold, data the model cannot read, a plan the model or layout cannot hold, or a
    missing or foreign ``train.init_from`` checkpoint."""
    from gts_megatron.base.pretrain import check_run_data
    from gts_megatron.contracts.checkpoint import read_meta
    from gts_megatron.engine.checkpoint import check_model_matches, resolve_checkpoint

    cfg.data_parallel_size(world_size)
    check_run_data(cfg)
    moe = None
    if cfg.moe.plan:
        from gts_megatron.contracts.plan import moe_identity
        from gts_megatron.train import check_moe

        moe = moe_identity(check_moe(cfg))
    if cfg.train.init_from:
        init = resolve_checkpoint(Path(cfg.train.init_from))
        check_model_matches(init, read_meta(init), cfg.model, moe)
