"""The training loop on megatron-core, shared by every training stage.

One step: micro-batches through megatron's forward-backward schedule (gradient accumulation),
DDP gradient reduction, the megatron optimizer (clipping, mixed precision) and the LR schedule.
Around it: resume from the newest checkpoint, checkpoints every N steps and on SIGTERM/SIGINT,
metrics to metrics.jsonl and TensorBoard, a progress display, and a held-out validation loss.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.transformer_config import TransformerConfig

from gts_megatron.config import RunConfig
from gts_megatron.runtime.distributed import Runtime
from gts_megatron.engine import checkpoint as ckpt
from gts_megatron.engine.metrics import RunLog
from gts_megatron.engine.optim import build_optimizer

Batch = dict[str, torch.Tensor]
ForwardStep = Callable[[Batch, torch.nn.Module], tuple[torch.Tensor, Callable]]


def lm_forward_step(batch: Batch, model: torch.nn.Module):
    """Next-token prediction: the model's per-token losses, averaged per micro-batch over the
    tokens the batch's ``loss_mask`` keeps (all of them when it has none)."""
    tokens = batch["tokens"]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    per_token = model(input_ids=tokens, position_ids=positions, attention_mask=None, labels=batch["labels"])
    mask = batch.get("loss_mask")

    def loss_func(output: torch.Tensor):
        if mask is None:
            loss = output.float().mean()
        else:
            keep = mask.float()
            loss = (output.float() * keep).sum() / keep.sum().clamp(min=1.0)
        return loss, {"loss": loss.detach().clone()}  # clone: the schedule scales `loss` in place

    return per_token, loss_func


def wrap_ddp(model: torch.nn.Module, config: TransformerConfig, distributed_optimizer: bool):
    """Megatron DDP around ``model`` and the schedule hooks it needs."""
    ddp = DistributedDataParallel(
        config=config, module=model,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=distributed_optimizer))
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync  # gradient accumulation: reduce once per step
    return ddp


# (first sample of a global batch, samples per rank) -> the global sample indices this rank reads
SampleOrder = Callable[[int, int], Sequence[int]]


def contiguous_order(dp_rank: int) -> SampleOrder:
    """Data-parallel rank ``dp_rank`` reads the ``dp_rank``-th contiguous slice of each global
    batch. Global sample order is fixed by the step alone, so any layout, and any resumed run,
    reads the same samples in the same place."""
    return lambda first_sample, per_rank: range(first_sample + dp_rank * per_rank,
                                                first_sample + (dp_rank + 1) * per_rank)


def micro_batches(dataset, indices: Sequence[int], micro_batch_size: int, device: torch.device,
                  split: str = "train") -> Iterator[Batch]:
    """Samples ``indices`` of ``split`` as micro-batches of ``micro_batch_size`` on ``device``."""
    for offset in range(0, len(indices), micro_batch_size):
        chunk = list(indices[offset:offset + micro_batch_size])
        yield {k: v.to(device) for k, v in dataset.batch(chunk, split).items()}


class StopRequest:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint at the end of the step and leave."""

    def __init__(self):
        self.signum: Optional[int] = None  # the signal every rank agreed on
        self._received: Optional[int] = None  # written only by the handler, so none is lost
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self._received = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank was signalled (collective). A signal that lands
        during the all-reduce is kept for the next call, never overwritten."""
        flag = torch.tensor([self._received or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _mean_over_data_parallel(values: list[torch.Tensor], device: torch.device) -> float:
    total = torch.stack([v.float() for v in values]).sum().to(device) if values else torch.zeros((), device=device)
    both = torch.stack([total, torch.tensor(float(len(values)), device=device)])
    dist.all_reduce(both, group=parallel_state.get_data_parallel_group())
    return float(both[0] / both[1]) if both[1] > 0 else float("nan")


def _mean_reports(reports: list[dict], device: torch.device) -> dict[str, float]:
    """Each reported metric (loss, router accuracy, ...) averaged over micro-batches and DP ranks."""
    keys = list(reports[0]) if reports else ["loss"]
    return {key: _mean_over_data_parallel([r[key] for r in reports], device) for key in keys}


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    step: int
    loss: Optional[float]
    valid_loss: Optional[float]  # mean over the validation sets
    valid_losses: Optional[dict[str, float]] = None  # per validation set (per language)
    interrupted_by: Optional[int] = None
    checkpoint: Optional[Path] = None


def evaluate(model, dataset, cfg: RunConfig, runtime: Runtime, forward_step: ForwardStep) -> dict[str, dict]:
    """Every reported metric (the loss; router loss and accuracy for GtS) on each of the dataset's
    validation sets (one per language for multilingual data), over at most ``train.eval_samples``
    held-out sequences each: {set name: {metric: value}}. Collective."""
    results = {}
    model.eval()
    for name, split, samples in dataset.eval_sets(cfg.train.eval_samples):
        per_rank = samples // runtime.data
        if per_rank == 0:
            continue
        mbs = min(cfg.train.micro_batch_size, per_rank)
        per_rank -= per_rank % mbs
        indices = contiguous_order(parallel_state.get_data_parallel_rank())(0, per_rank)
        data = micro_batches(dataset, indices, mbs, runtime.device, split=split)
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=lambda it, m: forward_step(next(it), m), data_iterator=data,
                model=[model], num_microbatches=per_rank // mbs, seq_length=cfg.train.seq_length,
                micro_batch_size=mbs, forward_only=True)
        results[name] = _mean_reports(out, runtime.device)
    model.train()
    return results


def _log_validation(log: RunLog, step: int, results: dict[str, dict]) -> Optional[float]:
    """Log each metric per validation set and its mean over sets (``valid_<metric>`` and
    ``valid_<metric>/<set>``); returns the mean loss (None without validation sets)."""
    if not results:
        return None
    metrics = {}
    for key in next(iter(results.values())):
        values = {name: r[key] for name, r in results.items()}
        metrics[f"valid_{key}"] = sum(values.values()) / len(values)
        if len(values) > 1:
            metrics.update({f"valid_{key}/{name}": v for name, v in values.items()})
    log.log(step, metrics, show=False)
    losses = {name: r["loss"] for name, r in results.items()}
    detail = "" if len(losses) == 1 else " (" + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()) + ")"
    extra = "".join(f", {k} {v:.3f}" for k, v in metrics.items() if "/" not in k and k != "valid_loss")
    log.message(f"valid loss {metrics['valid_loss']:.4f} after {step} steps{detail}{extra}")
    return metrics["valid_loss"]


def train(cfg: RunConfig, run_dir: Path, runtime: Runtime, model: torch.nn.Module,
          config: TransformerConfig, dataset, forward_step: ForwardStep = lm_forward_step,
          desc: str = "train", moe: Optional[dict] = None, save: bool = True,
          record: Optional[dict] = None, order: Optional[SampleOrder] = None,
          before_step: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train ``model`` for ``cfg.train.steps`` optimizer steps, resuming ``run_dir`` if it has a
    checkpoint. Collective: every rank calls it with its own shard of the model. ``moe``
    describes an MoE model's layout; checkpoints record it and must agree with it. With
    ``save`` False nothing is written to ``checkpoints/`` (probes keep only what they measure).
    ``record`` goes into every checkpoint's meta.json (see :func:`ckpt.save_checkpoint`).
    ``order`` picks each rank's training samples (default: :func:`contiguous_order`).
    ``before_step(step)`` runs before each step (and each validation) with the steps done so far."""
    t = cfg.train
    per_rank = t.global_batch_size // cfg.data_parallel_size(runtime.env.world_size)
    model = wrap_ddp(model, config, cfg.parallel.distributed_optimizer)
    optimizer, scheduler = build_optimizer(model, t, cfg.model, cfg.parallel)
    if config.fp16 or config.bf16:
        config.grad_scale_func = optimizer.scale_loss

    ckpt_root = run_dir / "checkpoints"
    state = {"step": 0, "consumed_samples": t.data_offset}
    resume_from = ckpt.latest_checkpoint(ckpt_root)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model, cfg.model, optimizer, scheduler, moe=moe)
    elif t.init_from:
        ckpt.load_checkpoint(ckpt.resolve_checkpoint(Path(t.init_from)), model, cfg.model, moe=moe)
        optimizer.reload_model_params()  # fp32 master copies follow the loaded weights
    log = RunLog(run_dir, runtime.is_main, t.steps, state["step"], t.tensorboard, desc)
    if resume_from is not None:
        log.message(f"resumed from {resume_from} at step {state['step']}")

    schedule = get_forward_backward_func()
    stop = StopRequest()
    order = order or contiguous_order(parallel_state.get_data_parallel_rank())
    last_saved, loss, path = state["step"] if resume_from else None, None, None
    before_step = before_step or (lambda step: None)
    try:
        before_step(state["step"])
        if t.eval_interval and resume_from is None and state["step"] < t.steps:  # the untrained baseline
            _log_validation(log, 0, evaluate(model, dataset, cfg, runtime, forward_step))
        while state["step"] < t.steps:
            before_step(state["step"])
            started = time.perf_counter()
            data = micro_batches(dataset, order(state["consumed_samples"], per_rank), t.micro_batch_size,
                                 runtime.device)
            model.zero_grad_buffer()
            optimizer.zero_grad()
            out = schedule(forward_step_func=lambda it, m: forward_step(next(it), m), data_iterator=data,
                           model=[model], num_microbatches=per_rank // t.micro_batch_size,
                           seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=False)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            _, grad_norm, _ = optimizer.step()
            scheduler.step(increment=1)
            state["step"] += 1
            state["consumed_samples"] += t.global_batch_size
            reported = _mean_reports(out, runtime.device)
            loss = reported["loss"]
            elapsed = time.perf_counter() - started
            if state["step"] % t.log_interval == 0 or state["step"] == t.steps:
                log.log(state["step"], {
                    **reported, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "lr": lr, "step_time_s": elapsed,
                    "tokens_per_s": t.global_batch_size * t.seq_length / elapsed})
            interrupted = stop.agreed(runtime.device)
            due = t.save_interval and state["step"] % t.save_interval == 0
            if save and (due or interrupted or state["step"] == t.steps):
                path = ckpt.save_checkpoint(ckpt_root, state["step"], model, optimizer, scheduler,
                                            state, cfg.model, t.keep_checkpoints, moe=moe, record=record)
                last_saved = state["step"]
            if interrupted:
                path = path if save else None
                log.message(f"stopped by signal {stop.signum} at step {state['step']}" + (
                    f"; checkpoint {path}; run the same command again to resume" if save else ""))
                return TrainResult(state["step"], loss, None, None, stop.signum, path)
            before_step(state["step"])
            if t.eval_interval and state["step"] % t.eval_interval == 0 and state["step"] < t.steps:
                _log_validation(log, state["step"], evaluate(model, dataset, cfg, runtime, forward_step))
        results = evaluate(model, dataset, cfg, runtime, forward_step)
        valid = _log_validation(log, state["step"], results)
        path = ckpt_root / f"iter_{last_saved:07d}" if last_saved else None
        losses = {name: r["loss"] for name, r in results.items()} or None
        return TrainResult(state["step"], loss, valid, losses, None, path)
    finally:
        stop.restore()
        log.close()
