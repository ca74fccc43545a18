"""Stage "train": GtS training of the expanded MoE model (``gts train --stage group|learned``).

Stage 1 ("group"): every token goes to the expert of its language's group, and the routers learn
to predict that expert (router classification loss, weight ``moe.router_loss_weight``, logged
as ``router_loss`` and ``router_accuracy``). Start it from `gts expand`'s checkpoint.
Stage 2 ("learned"): megatron's top-k router with load balancing; no group ids at inference.
Start it from a stage-1 checkpoint: the router weights carry over. Over the first
``moe.handover`` of its steps routing passes from group routing to the learned top-k (see
:class:`gts_megatron.model.gts.HandoverRouter`), so the switch does not raise the loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from megatron.core import parallel_state

from gts_megatron.data.dataset import build_dataset
from gts_megatron.contracts.checkpoint import CheckpointRecord, TokenizerRecord
from gts_megatron.config import RunConfig
from gts_megatron.data.placement import Placement
from gts_megatron.engine.loop import TrainResult, lm_forward_step
from gts_megatron.engine.trainer import TrainSpec, train
from gts_megatron.engine.session import training_session
from gts_megatron.model.gts import ROUTING, build_moe_model, handover_share
from gts_megatron.model.sizes import moe_parameter_counts
from gts_megatron.contracts.preflight import check_moe
from gts_megatron.contracts.plan import Plan


def gts_forward_step(batch, model):
    """The LM step with the micro-batch's group ids handed to the routers (on every pipeline
    stage: each reads its own copy of the batch)."""
    ROUTING.begin(batch.get("group_ids"))
    return lm_forward_step(batch, model)


def router_metrics(config, device: torch.device) -> Callable[[], dict[str, float]]:
    """The GtS stages' step metrics: router loss and accuracy, or the load-balancing loss, of a
    step's forward passes over every MoE layer and rank (collective)."""
    return lambda: ROUTING.step_metrics(
        device, config.num_layers, config.sequence_parallel, parallel_state.get_tensor_model_parallel_group(),
        parallel_state.get_data_parallel_group(), parallel_state.get_pipeline_model_parallel_group())


def build_gts_model(cfg: RunConfig, plan: Plan):
    """The expanded model for ``cfg.moe.stage`` on this rank (its TP/EP shard) and its config."""
    return build_moe_model(cfg.model, cfg.parallel, cfg.moe, plan)


def train_stage(cfg: RunConfig, run_dir: Path,
                prepare_model: Optional[Callable[[torch.nn.Module], None]] = None) -> TrainResult:
    """Run (or resume) GtS training stage ``cfg.moe.stage`` into ``run_dir``. Collective.
    ``prepare_model`` sees the model before training (adaptation freezes parameters there)."""
    plan = check_moe(cfg)
    total, active = moe_parameter_counts(cfg.model, plan, 1 if cfg.moe.stage == "group" else cfg.moe.topk)
    banner = (f"GtS model, stage {cfg.moe.stage}: {total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active "
              f"per token; {plan.num_experts} experts in layers {sorted(plan.moe_layers)}")
    with training_session(cfg, run_dir, banner) as runtime:
        model, config = build_gts_model(cfg, plan)
        if prepare_model is not None:
            prepare_model(model)
        handover_steps = round(cfg.moe.handover * cfg.train.steps) if cfg.moe.stage == "learned" else 0
        groups = plan.language_to_group if cfg.moe.stage == "group" or handover_steps else None
        placement, order = None, None
        if cfg.moe.placement:
            placement = Placement(plan.expert_of_language(), plan.num_experts, cfg.parallel.expert)
        dataset = build_dataset(cfg, run_dir, groups, placement)
        if placement is not None:  # each EP rank reads only the languages whose experts it holds
            order = dataset.placed.order(parallel_state.get_expert_model_parallel_rank(),
                                         parallel_state.get_expert_data_parallel_rank())
        record = CheckpointRecord(stage=cfg.moe.stage, topk=cfg.moe.topk if cfg.moe.stage == "learned" else 1,
                                  plan=plan, tokenizer=TokenizerRecord.of_dataset(dataset))
        ROUTING.reset()
        try:
            return train(cfg, run_dir, runtime, TrainSpec(
                model, config, dataset, gts_forward_step, desc=f"train/{cfg.moe.stage}",
                record=record, order=order, step_metrics=router_metrics(config, runtime.device),
                on_step_start=lambda step: setattr(ROUTING, "handover", handover_share(step, handover_steps))))
        finally:
            ROUTING.handover = None
