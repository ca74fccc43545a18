"""The DeepSpeed ZeRO probe engine, for models too large for one device.

The base weights come out of the megatron checkpoint into the plain-PyTorch twin of the model
(:mod:`gts_megatron.model.torch_llama`, same parameter names); DeepSpeed trains it with ZeRO
stage 2 or 3 and optimizer (and, at stage 3, parameter) offload to CPU, under the same optimiser
settings as the megatron engine; the trained weights are gathered back for the deltas. Data comes
from the same per-language megatron datasets.
"""
from __future__ import annotations

import contextlib
import os

import torch

from gts_megatron.config import TrainConfig


def adamw(params, t: TrainConfig) -> torch.optim.AdamW:
    """torch AdamW under the run's optimiser settings (DeepSpeed then shards or offloads its state)."""
    return torch.optim.AdamW(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                             weight_decay=t.weight_decay)


def deepspeed_config(t: TrainConfig, zero: dict, data_parallel: int, bf16: bool = False) -> dict:
    """DeepSpeed's config for the run's batch (``t``: micro-batch, global batch over
    ``data_parallel`` ranks), clipping and ZeRO settings ``zero``."""
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * data_parallel),
        "gradient_clipping": t.clip_grad, "zero_optimization": zero, "bf16": {"enabled": bf16},
        # torch AdamW (also on offloaded fp32 weights): no compiled DeepSpeedCPUAdam needed
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30}


def deepspeed_engine(model: torch.nn.Module, optimizer, config: dict, local_rank: int, schedule=None):
    """A DeepSpeed engine for ``model`` under ``config`` (:func:`deepspeed_config`), in the
    existing process group."""
    import deepspeed

    # DeepSpeed insists on LOCAL_RANK even when the process group already exists
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    return engine


def train_with_deepspeed(run, names: tuple[str, ...]) -> tuple[dict, dict]:
    """Fine-tune ``run`` (a probe.run.ProbeRun) from its base with DeepSpeed; returns (before,
    after) of the parameters whose names end with one of ``names`` (float32, full tensors)."""
    import deepspeed

    from gts_megatron.data.dataset import build_dataset
    from gts_megatron.engine.checkpoint import Checkpointable, load_checkpoint, unwrap
    from gts_megatron.engine.loop import micro_batches
    from gts_megatron.model.llama import build_model, transformer_config
    from gts_megatron.model.torch_llama import from_megatron_state

    cfg, run_cfg, model_cfg, rt, run_dir = run.cfg, run.run_cfg, run.model_cfg, run.runtime, run.work_dir
    t = run_cfg.train
    megatron_model = build_model(model_cfg, transformer_config(model_cfg, run_cfg.parallel))
    load_checkpoint(run.base, Checkpointable(megatron_model, model_cfg))
    model = from_megatron_state(model_cfg, unwrap(megatron_model).state_dict())
    del megatron_model
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if n.endswith(names)}
    dataset = build_dataset(run_cfg, run_dir)
    zero = {"stage": cfg.zero_stage, "offload_optimizer": {"device": "cpu"}}
    if cfg.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    optimizer = adamw(model.parameters(), t)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / t.steps))
    engine = deepspeed_engine(model, optimizer, deepspeed_config(t, zero, data_parallel=1), rt.env.local_rank,
                              schedule)
    for step in range(t.steps):
        samples = range(step * t.global_batch_size, (step + 1) * t.global_batch_size)
        for batch in micro_batches(dataset, samples, t.micro_batch_size, rt.device):
            per_token = engine(batch["tokens"], batch["labels"])
            mask = batch["loss_mask"].float()
            engine.backward((per_token * mask).sum() / mask.sum().clamp(min=1.0))
            engine.step()
    params = [p for n, p in engine.module.named_parameters() if n.endswith(names)]
    gather = deepspeed.zero.GatheredParameters(params) if cfg.zero_stage == 3 else contextlib.nullcontext()
    with gather:
        after = {n: p.detach().float().clone() for n, p in engine.module.named_parameters() if n.endswith(names)}
    engine.destroy()
    return before, after
