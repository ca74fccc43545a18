"""Stage "expand": a dense checkpoint + plan.json -> the GtS MoE checkpoint, function-preserving.

In every planned layer the MLP becomes a megatron-core MoELayer with one expert per group, each
an exact copy of the dense MLP, and a router (linear, no bias, randomly initialised); all other
weights are copied unchanged. Under group routing every token meets a copy of the MLP it had
before with weight 1, so the expanded model computes the dense model's function. (Megatron's own
upcycling rescales expert weights for softmax routers, which would break that.)

The expansion runs in one process; the result is a megatron dist-checkpoint that loads at any
tensor/expert-parallel layout.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import ExpandConfig, MoEConfig, ParallelConfig, TrainConfig
from gts_megatron.contracts.checkpoint import read_meta
from gts_megatron.engine.checkpoint import (Checkpointable, has_optimizer_state, load_checkpoint, unwrap,
                                            write_moe_checkpoint)
from gts_megatron.engine.loop import wrap_ddp
from gts_megatron.engine.optim import adam_slots, build_optimizer
from gts_megatron.contracts.checkpoint import resolve_checkpoint
from gts_megatron.errors import GtsError
from gts_megatron.model import state_names
from gts_megatron.model.gts import build_moe_model
from gts_megatron.model.sizes import moe_parameter_counts
from gts_megatron.model.llama import build_model, transformer_config
from gts_megatron.contracts.plan import load_plan
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

RECORD_FILE = "expand.json"


def expert_weights_from_dense(dense_state: dict, moe_state: dict) -> dict:
    """The expanded model's state: every expert from its layer's dense MLP, routers as
    initialised, everything else copied. Refuses a dense state that lacks a tensor it needs."""
    out = {}
    for key, value in moe_state.items():
        if key.endswith("_extra_state"):
            continue
        source = state_names.dense_source(key)
        if state_names.is_router(key):
            out[key] = value
        elif source not in dense_state:
            raise GtsError(f"the dense checkpoint has no tensor {source} for {key}")
        elif dense_state[source].shape != value.shape:
            raise GtsError(f"{source} has shape {tuple(dense_state[source].shape)}, {key} needs {tuple(value.shape)}")
        else:
            out[key] = dense_state[source].clone()
    return out


def expanded_moments(dense_optimizer, dense_model, moe_optimizer, moe_model) -> None:
    """Give ``moe_optimizer`` the dense model's Adam state, mapped as the weights are: every expert
    continues its layer's MLP's moments, the rest their own; routers start at zero moments. Adam's
    step is shared by every parameter (megatron saves one), so the routers' continues too."""
    dense_state = {name: inner.state[param] for name, param, inner in adam_slots(dense_optimizer, dense_model)}
    if not dense_state:
        raise GtsError("the dense checkpoint's optimizer holds no state to expand")
    step = next(iter(dense_state.values()))["step"]
    for name, param, inner in adam_slots(moe_optimizer, moe_model):
        if state_names.is_router(name):
            inner.state[param] = {"step": step.clone(), "exp_avg": torch.zeros_like(param),
                                  "exp_avg_sq": torch.zeros_like(param)}
            continue
        source = dense_state[state_names.dense_source(name)]
        inner.state[param] = {key: value.clone() for key, value in source.items()}


def _with_optimizer(model, config, model_cfg, parallel):
    """``model`` wrapped for training with the optimizer a training stage builds (train defaults)."""
    ddp = wrap_ddp(model, config, parallel.distributed_optimizer)
    return ddp, build_optimizer(ddp, TrainConfig(), model_cfg, parallel)[0]


def expand(dense: Path, plan_path: Path, out: Path, options: Optional[ExpandConfig] = None, log=print) -> Path:
    """Write the expanded checkpoint under ``out`` (``out/iter_0000000`` + ``latest``); skipped when
    ``out`` already holds the expansion of the same dense checkpoint with the same plan. With
    ``options.optimizer_state`` it also holds the dense run's Adam moments, expanded (see
    :func:`expanded_moments`), for a stage that continues them (``train.init_optimizer``)."""
    options = options or ExpandConfig()
    dense = resolve_checkpoint(Path(dense))
    meta = read_meta(dense)
    if meta.moe is not None:
        raise GtsError(f"checkpoint {dense} is already an MoE model; expand a dense checkpoint")
    model_cfg = meta.model
    plan = load_plan(plan_path)
    plan.check_model(model_cfg.num_layers, str(plan_path))
    record = {"dense": str(dense.resolve()), "dense_step": meta.step, "plan_sha256": plan.sha256(),
              **({"optimizer_state": True} if options.optimizer_state else {})}
    if options.optimizer_state and not has_optimizer_state(dense):
        raise GtsError(f"--optimizer-state: checkpoint {dense} holds weights only, no optimizer state to expand")
    if (out / RECORD_FILE).is_file() and json.loads((out / RECORD_FILE).read_text()) == record:
        log(f"{out} already holds this expansion; nothing to do")
        return resolve_checkpoint(out)
    total, active = moe_parameter_counts(model_cfg, plan, topk=1)
    log(f"expanding {dense} with {plan_path}: {plan.num_experts} experts in layers {sorted(plan.moe_layers)}; "
        f"{total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active per token")
    parallel = ParallelConfig()
    runtime = init_runtime(parallel, options.seed)
    try:
        if runtime.env.world_size != 1:
            raise GtsError("gts expand runs in one process; its checkpoint loads at any layout afterwards")
        dense_config = transformer_config(model_cfg, parallel)
        dense_model = build_model(model_cfg, dense_config)
        moe_model, moe_config = build_moe_model(model_cfg, parallel, MoEConfig(plan=str(plan_path), stage="group"),
                                                plan)
        dense_optimizer = moe_optimizer = None
        if options.optimizer_state:
            dense_model, dense_optimizer = _with_optimizer(dense_model, dense_config, model_cfg, parallel)
            moe_model, moe_optimizer = _with_optimizer(moe_model, moe_config, model_cfg, parallel)
        load_checkpoint(dense, Checkpointable(dense_model, model_cfg, dense_optimizer), resume=False)
        with torch.no_grad():
            state = expert_weights_from_dense(unwrap(dense_model).state_dict(), unwrap(moe_model).state_dict())
            unwrap(moe_model).load_state_dict(state, strict=False)
        if options.optimizer_state:
            moe_optimizer.reload_model_params()  # mixed precision: master copies of the expanded weights
            expanded_moments(dense_optimizer, unwrap(dense_model), moe_optimizer, unwrap(moe_model))
        path = write_moe_checkpoint(out, Checkpointable(moe_model, model_cfg, moe_optimizer), plan, meta.tokenizer)
        atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    finally:
        shutdown_runtime()
    log(f"wrote {path}")
    return path
