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

import torch

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import MoEConfig, ParallelConfig
from gts_megatron.contracts.checkpoint import read_meta
from gts_megatron.engine.checkpoint import Checkpointable, load_checkpoint, unwrap, write_moe_checkpoint
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


def expand(dense: Path, plan_path: Path, out: Path, seed: int = 1234, log=print) -> Path:
    """Write the expanded checkpoint under ``out`` (``out/iter_0000000`` + ``latest``); skipped when
    ``out`` already holds the expansion of the same dense checkpoint with the same plan."""
    dense = resolve_checkpoint(Path(dense))
    meta = read_meta(dense)
    if meta.moe is not None:
        raise GtsError(f"checkpoint {dense} is already an MoE model; expand a dense checkpoint")
    model_cfg = meta.model
    plan = load_plan(plan_path)
    plan.check_model(model_cfg.num_layers, str(plan_path))
    record = {"dense": str(dense.resolve()), "dense_step": meta.step, "plan_sha256": plan.sha256()}
    if (out / RECORD_FILE).is_file() and json.loads((out / RECORD_FILE).read_text()) == record:
        log(f"{out} already holds this expansion; nothing to do")
        return resolve_checkpoint(out)
    total, active = moe_parameter_counts(model_cfg, plan, topk=1)
    log(f"expanding {dense} with {plan_path}: {plan.num_experts} experts in layers {sorted(plan.moe_layers)}; "
        f"{total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active per token")
    parallel = ParallelConfig()
    runtime = init_runtime(parallel, seed)
    try:
        if runtime.env.world_size != 1:
            raise GtsError("gts expand runs in one process; its checkpoint loads at any layout afterwards")
        dense_model = build_model(model_cfg, transformer_config(model_cfg, parallel))
        load_checkpoint(dense, Checkpointable(dense_model, model_cfg))
        moe_cfg = MoEConfig(plan=str(plan_path), stage="group")
        moe_model, _ = build_moe_model(model_cfg, parallel, moe_cfg, plan)
        with torch.no_grad():
            state = expert_weights_from_dense(unwrap(dense_model).state_dict(), unwrap(moe_model).state_dict())
            unwrap(moe_model).load_state_dict(state, strict=False)
        path = write_moe_checkpoint(out, moe_model, model_cfg, plan, meta.tokenizer)
        atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    finally:
        shutdown_runtime()
    log(f"wrote {path}")
    return path
