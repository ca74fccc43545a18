"""What can be checked about a training run before any process starts (locally or on Slurm):
the layout, the data, the plan and the starting checkpoint. Nothing here imports megatron, so a
bad run is refused in the time it takes to read its files."""
from __future__ import annotations

from pathlib import Path

from gts_megatron.config import RunConfig
from gts_megatron.contracts.checkpoint import check_model_matches, read_meta, resolve_checkpoint
from gts_megatron.contracts.plan import Plan, load_plan, moe_identity
from gts_megatron.data.mixture import check_data
from gts_megatron.errors import GtsError


def preflight(cfg: RunConfig, world_size: int) -> None:
    """Refuse, in one line, a run that would fail in its workers: a parallel layout the world
    size cannot hold, data the model cannot read, a plan the model or layout cannot hold, or a
    missing or foreign ``train.init_from`` checkpoint."""
    cfg.data_parallel_size(world_size)
    check_run_data(cfg)
    moe = None
    if cfg.moe.plan:
        moe = moe_identity(check_moe(cfg))
    if cfg.train.init_from:
        init = resolve_checkpoint(Path(cfg.train.init_from))
        check_model_matches(init, read_meta(init), cfg.model, moe)


def check_run_data(cfg: RunConfig) -> None:
    """Refuse data that cannot feed this run, before any process starts."""
    if cfg.data.kind == "indexed":
        check_data(Path(cfg.data.path), cfg.data.languages, cfg.train.seq_length, cfg.model.vocab_size)


def check_moe(cfg: RunConfig) -> Plan:
    """The run's plan, refused if the model or the expert-parallel layout cannot hold it."""
    if not cfg.moe.plan:
        raise GtsError("moe.plan is not set: GtS training needs the plan.json that `gts plan` wrote")
    plan = load_plan(Path(cfg.moe.plan))
    plan.check_model(cfg.model.num_layers, cfg.moe.plan)
    ep = cfg.parallel.expert
    if plan.num_experts % ep:
        raise GtsError(f"{cfg.moe.plan}: {plan.num_experts} experts cannot be spread evenly over "
                       f"parallel.expert={ep} ranks; use an expert-parallel size that divides {plan.num_experts}")
    if cfg.moe.stage == "learned" and cfg.moe.topk > plan.num_experts:
        raise GtsError(f"moe.topk {cfg.moe.topk} is more than the plan's {plan.num_experts} experts")
    return plan
