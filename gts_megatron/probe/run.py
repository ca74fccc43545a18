"""One probe: from the dense base, a full fine-tune on one language, then what moved.

The paper's steps 1-2: ``steps`` AdamW steps (lr linear decay to 0, no warm-up, no weight decay)
on the language alone; then per layer the L2 norm of the FFN weight delta (gate, up and down
projections) and of the attention weight delta (QKV and output projections), and a CountSketch
of each layer's FFN delta (or the delta itself with ``exact``). Runs in one process on the
megatron-core engine the other stages use; nothing is checkpointed.

``delta: gradient`` measures the same tokens without moving the weights: the delta is
``-lr * steps`` times the language's mean gradient at the base (a first-order step). Adam divides
every weight's update by that weight's own gradient scale, so in a short probe a weight whose
gradient is noise moves as far as one whose gradient is signal; the plain gradient keeps their
sizes apart, and its noise averages out as tokens grow.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from gts_megatron.config import ModelConfig, ProbeConfig, RunConfig
from gts_megatron.contracts.checkpoint import CheckpointMeta, read_meta
from gts_megatron.errors import GtsError
from gts_megatron.model.state_names import FFN_WEIGHTS, layer_prefix
from gts_megatron.probe.sketch import sketch_tensors
from gts_megatron.probe.store import ProbeResult, SketchInfo, write_probe

FFN = FFN_WEIGHTS
ATTENTION = ("self_attention.linear_qkv.weight", "self_attention.linear_proj.weight")


def probe_inputs(cfg: ProbeConfig, base_meta: CheckpointMeta) -> dict:
    """What a probe result depends on; a stored result with other inputs is probed again."""
    keys = ("engine", "zero_stage", "steps", "lr", "micro_batch_size", "seq_length", "delta",
            "sketch_size", "exact", "seed")
    return {"base": str(Path(cfg.base).resolve()), "base_step": base_meta.step, "data": str(Path(cfg.data).resolve()),
            "sequences_per_step": cfg.sequences_per_step, **{k: getattr(cfg, k) for k in keys}}


def base_model(cfg: ProbeConfig) -> tuple[Path, CheckpointMeta, ModelConfig]:
    """The base checkpoint, its meta and its model config; an MoE checkpoint is refused."""
    from gts_megatron.contracts.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(Path(cfg.base))
    meta = read_meta(path)
    if meta.moe is not None:
        raise GtsError(f"checkpoint {path} is an MoE model; probes start from the dense base")
    return path, meta, meta.model


def probe_run_config(cfg: ProbeConfig, model: ModelConfig, language: str) -> RunConfig:
    """The training run a probe is: the paper's optimiser settings on one language."""
    from gts_megatron.config import build_config

    train = {"steps": cfg.steps, "lr": cfg.lr, "min_lr": 0.0, "warmup_steps": 0, "lr_decay": "linear",
             "weight_decay": 0.0, "micro_batch_size": cfg.micro_batch_size, "global_batch_size": cfg.sequences_per_step,
             "seq_length": cfg.seq_length, "seed": cfg.seed, "eval_samples": 0, "tensorboard": False,
             "log_interval": cfg.steps}
    data = {"kind": "indexed", "path": cfg.data, "languages": [language]}
    return build_config({"model": model.model_dump(mode="json"), "train": train, "data": data}, "probe")


def _train_megatron(cfg: ProbeConfig, run_cfg: RunConfig, model_cfg: ModelConfig, base: Path, run_dir: Path,
                    names: tuple[str, ...]) -> tuple[dict, dict]:
    """Fine-tune from ``base`` on the megatron-core engine; (before, after) of the named weights."""
    from gts_megatron.base.pretrain import build_dataset
    from gts_megatron.engine.checkpoint import load_checkpoint, unwrap
    from gts_megatron.engine.trainer import TrainSpec, train
    from gts_megatron.engine.session import training_session
    from gts_megatron.model.llama import build_model, transformer_config

    with training_session(run_cfg, run_dir, f"probe {run_cfg.data.languages[0]}") as runtime:
        torch.set_num_threads(cfg.cpus_per_probe)
        config = transformer_config(run_cfg.model, run_cfg.parallel)
        model = build_model(run_cfg.model, config)
        load_checkpoint(base, model, model_cfg)
        before = {n: p.detach().float().clone() for n, p in unwrap(model).named_parameters() if n.endswith(names)}
        train(run_cfg, run_dir, runtime, TrainSpec(model, config, build_dataset(run_cfg, run_dir),
                                                   desc=f"probe {run_cfg.data.languages[0]}", save=False))
        after = {n: p.detach().float().clone() for n, p in unwrap(model).named_parameters() if n.endswith(names)}
    return before, after


def _gradient_megatron(cfg: ProbeConfig, run_cfg: RunConfig, model_cfg: ModelConfig, base: Path, run_dir: Path,
                       names: tuple[str, ...]) -> tuple[dict, dict]:
    """The first-order probe: (before, before - lr * steps * mean gradient) of the named weights,
    the gradient averaged over the tokens ``steps`` optimizer steps would read."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from gts_megatron.base.pretrain import build_dataset
    from gts_megatron.engine.checkpoint import load_checkpoint, unwrap
    from gts_megatron.engine.loop import lm_forward_step, micro_batches, wrap_ddp
    from gts_megatron.engine.session import training_session
    from gts_megatron.model.llama import build_model, transformer_config

    t = run_cfg.train
    with training_session(run_cfg, run_dir, f"probe {run_cfg.data.languages[0]} (gradient)") as runtime:
        torch.set_num_threads(cfg.cpus_per_probe)
        config = transformer_config(run_cfg.model, run_cfg.parallel)
        model = build_model(run_cfg.model, config)
        load_checkpoint(base, model, model_cfg)
        model = wrap_ddp(model, config, distributed_optimizer=False)
        dataset = build_dataset(run_cfg, run_dir)
        model.zero_grad_buffer()
        for step in range(t.steps):  # main_grad accumulates the steps' mean gradients
            first = step * t.global_batch_size
            get_forward_backward_func()(
                forward_step_func=lambda it, m: lm_forward_step(next(it), m), model=[model],
                data_iterator=micro_batches(dataset, range(first, first + t.global_batch_size),
                                            t.micro_batch_size, runtime.device),
                num_microbatches=t.global_batch_size // t.micro_batch_size, seq_length=t.seq_length,
                micro_batch_size=t.micro_batch_size, forward_only=False)
        params = {n: p for n, p in unwrap(model).named_parameters() if n.endswith(names)}
        before = {n: p.detach().float().clone() for n, p in params.items()}
        after = {n: before[n] - cfg.lr * p.main_grad.detach().float() for n, p in params.items()}
    return before, after


def layer_deltas(before: dict, after: dict, num_layers: int, names) -> list[list[torch.Tensor]]:
    """Per layer, the weight deltas of the named sub-modules."""
    return [[after[layer_prefix(layer) + name] - before[layer_prefix(layer) + name] for name in names]
            for layer in range(num_layers)]


def run_probe(cfg: ProbeConfig, language: str, store: Path, log=print) -> ProbeResult:
    """Probe ``language`` and write its result into ``store``. Starts its own 1-process runtime."""
    from gts_megatron.probe.deepspeed_engine import train_with_deepspeed

    path, meta, model_cfg = base_model(cfg)
    run_cfg = probe_run_config(cfg, model_cfg, language)
    engine = {"megatron": _train_megatron, "deepspeed": train_with_deepspeed}[cfg.engine]
    if cfg.delta == "gradient":
        engine = _gradient_megatron
    with tempfile.TemporaryDirectory(prefix=f"probe-{language}-") as tmp:
        before, after = engine(cfg, run_cfg, model_cfg, path, Path(tmp), FFN + ATTENTION)
    ffn = layer_deltas(before, after, model_cfg.num_layers, FFN)
    attention = layer_deltas(before, after, model_cfg.num_layers, ATTENTION)
    norms = [float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas))) for deltas in ffn]
    att_norms = [float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas))) for deltas in attention]
    if cfg.exact:
        sketches = {layer: torch.cat([d.reshape(-1) for d in deltas]).numpy() for layer, deltas in enumerate(ffn)}
    else:
        sketches = {layer: sketch_tensors(deltas, cfg.sketch_size, cfg.seed).astype(np.float32)
                    for layer, deltas in enumerate(ffn)}
    result = ProbeResult(
        language=language, delta_norm_ffn=norms, delta_norm_att=att_norms,
        sketch=SketchInfo(kind="exact", seed=cfg.seed) if cfg.exact else
        SketchInfo(kind="countsketch", size=cfg.sketch_size, seed=cfg.seed),
        model=model_cfg.model_dump(mode="json"), inputs=probe_inputs(cfg, meta))
    write_probe(store, result, sketches)
    return result
