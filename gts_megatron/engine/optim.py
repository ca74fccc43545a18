"""Megatron's optimizer (AdamW, clipping, mixed precision) and learning-rate schedule."""
from __future__ import annotations

from typing import Iterator

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from gts_megatron.config import ModelConfig, ParallelConfig, TrainConfig


def build_optimizer(model, train: TrainConfig, model_cfg: ModelConfig, parallel: ParallelConfig):
    """AdamW over the DDP-wrapped model, with megatron's warm-up + decay scheduler."""
    config = OptimizerConfig(
        optimizer="adam", lr=train.lr, min_lr=train.min_lr, weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1, adam_beta2=train.adam_beta2, adam_eps=train.adam_eps,
        clip_grad=train.clip_grad, bf16=model_cfg.dtype == "bf16", fp16=model_cfg.dtype == "fp16",
        params_dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[model_cfg.dtype],
        use_distributed_optimizer=parallel.distributed_optimizer)
    optimizer = get_megatron_optimizer(config, [model])
    decay_steps = max(1, train.lr_decay_steps or train.steps)
    warmup = train.warmup_steps if train.steps else 0  # steps=0 (evaluate only) has no schedule
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else train.lr, max_lr=train.lr,
        min_lr=train.min_lr, lr_warmup_steps=warmup, lr_decay_steps=decay_steps,
        lr_decay_style=train.lr_decay, start_wd=train.weight_decay, end_wd=train.weight_decay,
        wd_incr_steps=decay_steps, wd_incr_style="constant")
    return optimizer, scheduler


def optimizer_parts(optimizer) -> list:
    """The megatron optimizers inside ``optimizer`` (a ChainedOptimizer holds one per parameter
    kind, dense and expert; any other is its own only part)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def adam_slots(optimizer, model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter, torch.optim.Optimizer]]:
    """(name in ``model``, the parameter Adam keeps state for, the torch optimizer holding it) of
    every trained parameter. Under mixed precision Adam's state sits on the fp32 master copy of the
    model's parameter; ``model`` is the unwrapped GPTModel whose names the checkpoints use."""
    names = {param: name for name, param in model.named_parameters()}
    for part in optimizer_parts(optimizer):
        if hasattr(part, "float16_groups"):  # megatron's Float16OptimizerWithFloat16Params
            pairs = [pair for low, master in zip(part.float16_groups, part.fp32_from_float16_groups)
                     for pair in zip(low, master)]
            pairs += [(param, param) for group in part.fp32_from_fp32_groups for param in group]
        else:
            pairs = [(param, param) for group in part.optimizer.param_groups for param in group["params"]]
        for model_param, adam_param in pairs:
            yield names[model_param], adam_param, part.optimizer
