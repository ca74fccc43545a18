"""The arms of `gts bench train`: one model with its optimizer and data each, stepped by hand so
that all of them can take turns step by step in one process.

- megatron-core: ``dense``; GtS under group routing with megatron's alltoall dispatcher
  (``gts-alltoall``), the csrc group dispatcher (``gts-group``), and the group dispatcher with
  group-aware placement (``gts-placement``: each EP rank trains only on its experts' languages).
- DeepSpeed: ``authors-zero``, the authors' approach: the exported Hugging Face GtS model under
  ZeRO-2, every micro-batch routed as a whole to its most common group; ``deepspeed-moe``: the
  same model with DeepSpeed-MoE's layer (top-1 gate, expert parallel) holding the same experts.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gts_megatron.bench.train.measure import ModuleTimer, sync
from gts_megatron.bench.train.workspace import Workspace
from gts_megatron.config.bench import DEEPSPEED_ARMS
from gts_megatron.runtime.distributed import Runtime
from gts_megatron.contracts.checkpoint import resolve_checkpoint
from gts_megatron.data.placement import Placement

AUX_LOSS_COEFF = 0.01  # DeepSpeed-MoE's load-balancing loss weight (megatron's default for learned routing)


def watch_modules(model: torch.nn.Module, timer: ModuleTimer) -> None:
    """Hook ``model``'s attention, dense MLP, MoE layer and expert modules into ``timer``; the
    names are megatron-core's and Hugging Face's."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if name.endswith(("self_attention", "self_attn")):
            timer.watch(module, "attention")
        elif name.endswith("mlp"):
            moe = hasattr(module, "experts") or isinstance(module, DeepSpeedMoEMLP)
            timer.watch(module, "moe_layer" if moe else "dense_mlp")
        elif (name.endswith(("mlp.experts", "deepspeed_moe.experts")) and kind != "ModuleList") or kind == "GtsExpert":
            timer.watch(module, "experts")


class MegatronArm:
    """A megatron-core model (TP/EP sharded) under megatron's DDP, optimizer and schedule."""

    def __init__(self, name: str, ws: Workspace, runtime: Runtime, dtype: str):
        from megatron.core import parallel_state

        from gts_megatron.data.dataset import build_dataset
        from gts_megatron.engine.checkpoint import Checkpointable, load_checkpoint
        from gts_megatron.engine.loop import contiguous_order, lm_forward_step, wrap_ddp
        from gts_megatron.engine.optim import build_optimizer
        from gts_megatron.model.llama import build_model, transformer_config
        from gts_megatron.contracts.preflight import check_moe
        from gts_megatron.train import build_gts_model, gts_forward_step

        cfg = ws.run_config(name, dtype)
        placement, plan, groups = None, None, None
        if name == "dense":
            config = transformer_config(cfg.model, cfg.parallel)
            model, self.forward_step, source = build_model(cfg.model, config), lm_forward_step, ws.dense
        else:
            plan = check_moe(cfg)
            (model, config), self.forward_step, source = build_gts_model(cfg, plan), gts_forward_step, ws.gts
            groups = plan.language_to_group
            if cfg.moe.placement:
                placement = Placement(plan.expert_of_language(), plan.num_experts, cfg.parallel.expert)
        self.dataset = build_dataset(cfg, ws.root / "runs" / name, groups, placement)
        if placement is not None:
            self.order = self.dataset.placed.order(parallel_state.get_expert_model_parallel_rank(),
                                                   parallel_state.get_expert_data_parallel_rank())
        else:
            self.order = contiguous_order(parallel_state.get_data_parallel_rank())
        self.model = wrap_ddp(model, config, False)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.train, cfg.model, cfg.parallel)
        if config.bf16:
            config.grad_scale_func = self.optimizer.scale_loss
        load_checkpoint(resolve_checkpoint(source), Checkpointable(self.model, cfg.model), plan)
        self.optimizer.reload_model_params()  # the master copies follow the loaded weights
        self.name, self.cfg, self.runtime, self.samples, self.config = name, cfg, runtime, 0, config
        self.per_rank = cfg.train.global_batch_size // cfg.data_parallel_size(runtime.env.world_size)

    def step(self) -> tuple[float, Optional[float]]:
        """One optimizer step (forward, backward, update): (wall seconds, this rank's mean loss;
        None on a pipeline stage before the last, which computes no loss)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from gts_megatron.engine.loop import micro_batches

        t = self.cfg.train
        data = micro_batches(self.dataset, self.order(self.samples, self.per_rank), t.micro_batch_size,
                             self.runtime.device)
        sync(self.runtime.device)
        started = time.perf_counter()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = get_forward_backward_func()(
            forward_step_func=lambda it, m: self.forward_step(next(it), m), data_iterator=data,
            model=[self.model], num_microbatches=self.per_rank // t.micro_batch_size,
            seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=False)
        self.optimizer.step()
        self.scheduler.step(increment=1)
        sync(self.runtime.device)
        elapsed = time.perf_counter() - started
        self.samples += t.global_batch_size
        return elapsed, float(torch.stack([r["loss"] for r in reports]).mean()) if reports else None

    def watch(self, timer: ModuleTimer) -> None:
        """Hook this arm's modules into ``timer``, and megatron's own schedule timers into the
        model's config (they synchronise the device: extra steps only)."""
        from megatron.core.timers import Timers

        watch_modules(self.model, timer)
        self.config.timers = Timers(log_level=2, log_option="max")

    def schedule_idle(self) -> Optional[float]:
        """The share of forward-backward this rank spent outside forward and backward compute
        (waiting on pipeline neighbours: the bubble, and the sends themselves) since ``watch``,
        from megatron's schedule timers, which are then detached."""
        timers, self.config.timers = self.config.timers, None
        total = timers("forward-backward").elapsed(reset=False)
        compute = sum(timers(name).elapsed(reset=False) for name in ("forward-compute", "backward-compute"))
        return max(0.0, 1.0 - compute / total) if total > 0 else None

    def close(self) -> None:
        """Nothing to release."""


class DeepSpeedMoEMLP(torch.nn.Module):
    """DeepSpeed-MoE's layer (top-1 gate, capacity without dropping) in place of a GtsMoE,
    holding its experts (this rank's share under expert parallelism) and its router weights."""

    def __init__(self, gts_moe: torch.nn.Module, ep_size: int, ep_rank: int):
        from deepspeed.moe.layer import MoE

        super().__init__()
        experts = len(gts_moe.experts)
        self.moe = MoE(gts_moe.config.hidden_size, expert=copy.deepcopy(gts_moe.experts[0]), num_experts=experts,
                       ep_size=ep_size, k=1, drop_tokens=False, use_rts=False)
        local = experts // ep_size
        with torch.no_grad():
            for i, expert in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
                expert.load_state_dict(gts_moe.experts[ep_rank * local + i].state_dict())
            self.moe.deepspeed_moe.gate.wg.weight.copy_(gts_moe.router.weight)
        self.aux_losses: list[torch.Tensor] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out, aux, _ = self.moe(hidden)
        self.aux_losses.append(aux)
        return out


def _quiet_deepspeed(device: torch.device) -> None:
    """DeepSpeed and transformers announce what they do at every build; the benchmark's own
    lines are the ones worth reading."""
    import logging

    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # known, so DeepSpeed need not warn it guessed
    from deepspeed.utils import logger
    from transformers.utils import logging as hf_logging

    logger.setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


class DeepSpeedArm:
    """The exported Hugging Face GtS model (remote code) trained by a DeepSpeed ZeRO-2 engine,
    data parallel over every process."""

    def __init__(self, name: str, ws: Workspace, runtime: Runtime, dtype: str):
        _quiet_deepspeed(runtime.device)
        from transformers import AutoModelForCausalLM

        from gts_megatron.data.dataset import build_dataset
        from gts_megatron.engine.loop import contiguous_order
        from gts_megatron.probe.deepspeed_engine import adamw, deepspeed_config, deepspeed_engine
        from gts_megatron.contracts.preflight import check_moe

        cfg = ws.run_config("gts-group")
        plan = check_moe(cfg)
        t = cfg.train
        model = AutoModelForCausalLM.from_pretrained(str(ws.hf), trust_remote_code=True, dtype=torch.float32,
                                                     attn_implementation="sdpa")
        model.config.use_cache = False
        params = [{"params": list(model.parameters()), "name": "params"}]
        self.moe_layers: list[DeepSpeedMoEMLP] = []
        if name == "deepspeed-moe":
            from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

            ep = ws.options().expert
            for layer in plan.moe_layers:
                block = model.model.layers[layer]
                block.mlp = DeepSpeedMoEMLP(block.mlp, ep, dist.get_rank() % ep)  # DeepSpeed's EP groups
                self.moe_layers.append(block.mlp)                                 # are consecutive ranks
            params = split_params_into_different_moe_groups_for_optimizer(
                [{"params": list(model.parameters()), "name": "params"}])
        world, numel = runtime.env.world_size, sum(p.numel() for p in model.parameters())
        # DeepSpeed's default 5e8-element buckets, but never larger than the model itself
        zero = {"stage": 2, "reduce_bucket_size": min(int(5e8), numel), "allgather_bucket_size": min(int(5e8), numel)}
        self.engine = deepspeed_engine(model, adamw(params, t), deepspeed_config(t, zero, world, dtype == "bf16"),
                                       runtime.env.local_rank)
        self.dataset = build_dataset(cfg, ws.root / "runs" / name, plan.language_to_group)
        self.order = contiguous_order(dist.get_rank())
        self.name, self.cfg, self.runtime, self.samples = name, cfg, runtime, 0
        self.per_rank = t.global_batch_size // world
        self.whole_batch_routing = name == "authors-zero"

    def _loss(self, batch: dict) -> torch.Tensor:
        groups = batch["group_ids"]
        if self.whole_batch_routing:  # the authors: the micro-batch's most common group for all of it
            groups = torch.full_like(groups, int(torch.mode(groups).values))
        logits = self.engine(input_ids=batch["tokens"], group_ids=groups).logits
        per_token = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="none")
        mask = batch["loss_mask"].flatten().float()
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        for layer in self.moe_layers:
            loss = loss + AUX_LOSS_COEFF * sum(layer.aux_losses) / len(self.moe_layers)
            layer.aux_losses.clear()
        return loss

    def step(self) -> tuple[float, float]:
        """One optimizer step over this rank's micro-batches: (wall seconds, mean loss)."""
        from gts_megatron.engine.loop import micro_batches

        data = micro_batches(self.dataset, self.order(self.samples, self.per_rank), self.cfg.train.micro_batch_size,
                             self.runtime.device)
        losses = []
        sync(self.runtime.device)
        started = time.perf_counter()
        for batch in data:
            loss = self._loss(batch)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(float(loss.detach()))
        sync(self.runtime.device)
        elapsed = time.perf_counter() - started
        self.samples += self.cfg.train.global_batch_size
        return elapsed, sum(losses) / len(losses)

    def watch(self, timer: ModuleTimer) -> None:
        """Hook this arm's modules into ``timer``."""
        watch_modules(self.engine.module, timer)

    def schedule_idle(self) -> Optional[float]:
        """None: DeepSpeed's steps here have no pipeline schedule."""
        return None

    def close(self) -> None:
        """Release DeepSpeed's hooks and buffers."""
        self.engine.destroy()


def build_arm(name: str, ws: Workspace, runtime: Runtime, dtype: str):
    """The arm called ``name`` on this rank."""
    cls = DeepSpeedArm if name in DEEPSPEED_ARMS else MegatronArm
    return cls(name, ws, runtime, dtype)

