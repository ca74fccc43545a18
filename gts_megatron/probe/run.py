"""One probe: from the dense base, a full fine-tune on one language, then what moved.

The paper's steps 1-2: ``steps`` AdamW steps (lr linear decay to 0, no warm-up, no weight decay)
on the language alone; then per layer the L2 norm of the FFN weight delta (gate, up and down
projections) and of the attention weight delta (QKV and output projections), and a CountSketch
of each layer's FFN delta (or the delta itself with ``exact``). Runs on the megatron-core
engine the other stages use, in one process or, with ``pipeline`` > 1, in that many local
processes each holding a share of the layers (:mod:`.worker`): every process summarises its own
layers and rank 0 writes the result, which does not depend on the layout. Nothing is checkpointed.

``delta: gradient`` measures the same tokens without moving the weights: the delta is
``-lr * steps`` times the language's mean gradient at the base (a first-order step). Adam divides
every weight's update by that weight's own gradient scale, so in a short probe a weight whose
gradient is noise moves as far as one whose gradient is signal; the plain gradient keeps their
sizes apart, and its noise averages out as tokens grow.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gts_megatron.artifacts import scratch_directory
from gts_megatron.config import ModelConfig, ProbeConfig, RunConfig, build_config
from gts_megatron.contracts.checkpoint import CheckpointMeta, read_meta, resolve_checkpoint
from gts_megatron.errors import GtsError
from gts_megatron.model.state_names import FFN_WEIGHTS, layer_prefix
from gts_megatron.probe.sketch import sketch_tensors
from gts_megatron.probe.store import ProbeResult, SketchInfo, read_probe, write_probe
from gts_megatron.runtime.launch import launch_local

FFN = FFN_WEIGHTS
ATTENTION = ("self_attention.linear_qkv.weight", "self_attention.linear_proj.weight")
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ProbeRun:
    """One probe as its engine sees it: the options, the training run they make, the base model
    and its config, a working folder (shared by a pipelined probe's processes) and the runtime."""

    cfg: ProbeConfig
    run_cfg: RunConfig
    model_cfg: ModelConfig
    base: Path
    work_dir: Path
    runtime: Any


def probe_inputs(cfg: ProbeConfig, base_meta: CheckpointMeta) -> dict:
    """What a probe result depends on; a stored result with other inputs is probed again."""
    keys = ("engine", "zero_stage", "steps", "lr", "micro_batch_size", "seq_length", "delta",
            "sketch_size", "exact", "seed")
    return {"base": str(Path(cfg.base).resolve()), "base_step": base_meta.step, "data": str(Path(cfg.data).resolve()),
            "sequences_per_step": cfg.sequences_per_step, **{k: getattr(cfg, k) for k in keys}}


def base_model(cfg: ProbeConfig) -> tuple[Path, CheckpointMeta, ModelConfig]:
    """The base checkpoint, its meta and its model config; an MoE checkpoint is refused."""
    path = resolve_checkpoint(Path(cfg.base))
    meta = read_meta(path)
    if meta.moe is not None:
        raise GtsError(f"checkpoint {path} is an MoE model; probes start from the dense base")
    return path, meta, meta.model


def probe_run_config(cfg: ProbeConfig, model: ModelConfig, language: str) -> RunConfig:
    """The training run a probe is: the paper's optimiser settings on one language."""
    train = {"steps": cfg.steps, "lr": cfg.lr, "min_lr": 0.0, "warmup_steps": 0, "lr_decay": "linear",
             "weight_decay": 0.0, "micro_batch_size": cfg.micro_batch_size, "global_batch_size": cfg.sequences_per_step,
             "seq_length": cfg.seq_length, "seed": cfg.seed, "eval_samples": 0, "tensorboard": False,
             "log_interval": cfg.steps}
    data = {"kind": "indexed", "path": cfg.data, "languages": [language]}
    return build_config({"model": model.model_dump(mode="json"), "train": train, "data": data,
                         "parallel": {"pipeline": cfg.pipeline}}, "probe")


def _megatron_model(run_cfg: RunConfig, model_cfg: ModelConfig, base: Path):
    """This rank's share of the dense base (its pipeline stage's layers), loaded, and its config."""
    from gts_megatron.engine.checkpoint import Checkpointable, load_checkpoint
    from gts_megatron.model.llama import build_model, transformer_config

    config = transformer_config(run_cfg.model, run_cfg.parallel)
    model = build_model(run_cfg.model, config)
    load_checkpoint(base, Checkpointable(model, model_cfg))
    return model, config


def global_names(named: dict, run_cfg: RunConfig) -> dict:
    """``named`` with this pipeline stage's layer numbers (megatron numbers each stage's layers
    from 0) turned into the model's: ``decoder.layers.<i>.`` becomes ``decoder.layers.<offset + i>.``."""
    from megatron.core import parallel_state

    if run_cfg.parallel.pipeline == 1:
        return named
    stage = parallel_state.get_pipeline_model_parallel_rank()
    offset = sum(run_cfg.parallel.stage_layers(run_cfg.model.num_layers)[:stage])
    return {_LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name, count=1): value
            for name, value in named.items()}


def _train_megatron(run: ProbeRun, names: tuple[str, ...]) -> tuple[dict, dict]:
    """Fine-tune from ``base`` on the megatron-core engine; (before, after) of the named weights
    this rank holds, by their names in the whole model."""
    from gts_megatron.data.dataset import build_dataset
    from gts_megatron.engine.checkpoint import unwrap
    from gts_megatron.engine.trainer import TrainSpec, train

    run_cfg = run.run_cfg
    model, config = _megatron_model(run_cfg, run.model_cfg, run.base)
    before = {n: p.detach().float().clone() for n, p in unwrap(model).named_parameters() if n.endswith(names)}
    train(run_cfg, run.work_dir, run.runtime, TrainSpec(model, config, build_dataset(run_cfg, run.work_dir),
                                                        desc=f"probe {run_cfg.data.languages[0]}", save=False))
    after = {n: p.detach().float().clone() for n, p in unwrap(model).named_parameters() if n.endswith(names)}
    return global_names(before, run_cfg), global_names(after, run_cfg)


def _gradient_megatron(run: ProbeRun, names: tuple[str, ...]) -> tuple[dict, dict]:
    """The first-order probe: (before, before - lr * steps * mean gradient) of the named weights
    this rank holds, the gradient averaged over the tokens ``steps`` optimizer steps would read."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from gts_megatron.data.dataset import build_dataset
    from gts_megatron.engine.checkpoint import unwrap
    from gts_megatron.engine.loop import lm_forward_step, micro_batches, wrap_ddp

    run_cfg, t = run.run_cfg, run.run_cfg.train
    model, config = _megatron_model(run_cfg, run.model_cfg, run.base)
    model = wrap_ddp(model, config, distributed_optimizer=False)
    dataset = build_dataset(run_cfg, run.work_dir)
    model.zero_grad_buffer()
    for step in range(t.steps):  # main_grad accumulates the steps' mean gradients
        first = step * t.global_batch_size
        get_forward_backward_func()(
            forward_step_func=lambda it, m: lm_forward_step(next(it), m), model=[model],
            data_iterator=micro_batches(dataset, range(first, first + t.global_batch_size),
                                        t.micro_batch_size, run.runtime.device),
            num_microbatches=t.global_batch_size // t.micro_batch_size, seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size, forward_only=False)
    params = {n: p for n, p in unwrap(model).named_parameters() if n.endswith(names)}
    before = {n: p.detach().float().clone() for n, p in params.items()}
    after = {n: before[n] - run.cfg.lr * p.main_grad.detach().float() for n, p in params.items()}
    return global_names(before, run_cfg), global_names(after, run_cfg)


def _norm(deltas: list[torch.Tensor]) -> float:
    """The L2 norm of several tensors taken together (in float64)."""
    return float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas)))


def _layer_summaries(cfg: ProbeConfig, before: dict, after: dict, num_layers: int) -> dict[int, tuple]:
    """{layer: (FFN delta norm, attention delta norm, FFN sketch or exact delta)} of the layers
    whose weights are in ``before`` (this rank's)."""
    summaries = {}
    for layer in range(num_layers):
        prefix = layer_prefix(layer)
        if prefix + FFN[0] not in before:
            continue
        ffn = [after[prefix + name] - before[prefix + name] for name in FFN]
        attention = [after[prefix + name] - before[prefix + name] for name in ATTENTION]
        vector = (torch.cat([d.reshape(-1) for d in ffn]).numpy() if cfg.exact
                  else sketch_tensors(ffn, cfg.sketch_size, cfg.seed).astype(np.float32))
        summaries[layer] = (_norm(ffn), _norm(attention), vector)
    return summaries


def _gathered(summaries: dict[int, tuple], runtime) -> dict[int, tuple]:
    """Every rank's layer summaries, merged on rank 0 (the other ranks get theirs back)."""
    import torch.distributed as dist

    if runtime.env.world_size == 1:
        return summaries
    parts = [None] * runtime.env.world_size if runtime.is_main else None
    dist.gather_object(summaries, parts, dst=0)
    return {layer: value for part in parts for layer, value in part.items()} if runtime.is_main else summaries


def _in_pipeline_processes(cfg: ProbeConfig, language: str, store: Path) -> Optional[ProbeResult]:
    """Run this probe in ``cfg.pipeline`` local processes (:mod:`.worker`); its result from the store."""
    with scratch_directory("probe") as tmp:
        options = tmp / "probe.json"
        options.write_text(cfg.model_dump_json())
        code = launch_local([str(options), language, str(store), str(tmp)], cfg.pipeline,
                            module="gts_megatron.probe.worker")
    if code:
        raise GtsError(f"probe {language}: its {cfg.pipeline} pipeline processes failed (exit {code}); "
                       f"their errors are above")
    return read_probe(store, language)


def run_probe(cfg: ProbeConfig, language: str, store: Path) -> ProbeResult:
    """Probe ``language`` and write its result into ``store``; returns it. Runs here, or in
    ``cfg.pipeline`` local processes started for it."""
    if cfg.pipeline > 1:
        return _in_pipeline_processes(cfg, language, store)
    return probe_here(cfg, language, store)


def probe_here(cfg: ProbeConfig, language: str, store: Path, work_dir: Optional[Path] = None) -> Optional[ProbeResult]:
    """The probe in this process, with its own runtime over the processes that were launched for
    it (collective); rank 0 writes the result and returns it, the others return None. The run's
    files (the data's index cache) go to ``work_dir``, one folder shared by the processes, or to
    a temporary folder of its own when there is one process."""
    from gts_megatron.engine.session import training_session
    from gts_megatron.probe.deepspeed_engine import train_with_deepspeed

    path, meta, model_cfg = base_model(cfg)
    run_cfg = probe_run_config(cfg, model_cfg, language)
    engine = {"megatron": _train_megatron, "deepspeed": train_with_deepspeed}[cfg.engine]
    detail = {"megatron": "", "deepspeed": f" (DeepSpeed ZeRO-{cfg.zero_stage})"}[cfg.engine]
    if cfg.delta == "gradient":
        engine, detail = _gradient_megatron, " (gradient)"
    with contextlib.ExitStack() as stack:
        tmp = work_dir or stack.enter_context(scratch_directory("probe"))
        runtime = stack.enter_context(training_session(run_cfg, tmp, f"probe {language}{detail}"))
        torch.set_num_threads(cfg.cpus_per_probe)
        before, after = engine(ProbeRun(cfg, run_cfg, model_cfg, path, tmp, runtime), FFN + ATTENTION)
        layers = _gathered(_layer_summaries(cfg, before, after, model_cfg.num_layers), runtime)
        if not runtime.is_main:
            return None
    result = ProbeResult(
        language=language, delta_norm_ffn=[layers[i][0] for i in range(model_cfg.num_layers)],
        delta_norm_att=[layers[i][1] for i in range(model_cfg.num_layers)],
        sketch=SketchInfo(kind="exact", seed=cfg.seed) if cfg.exact else
        SketchInfo(kind="countsketch", size=cfg.sketch_size, seed=cfg.seed),
        model=model_cfg.model_dump(mode="json"), inputs=probe_inputs(cfg, meta))
    write_probe(store, result, {i: layers[i][2] for i in range(model_cfg.num_layers)})
    return result
