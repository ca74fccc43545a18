"""The pieces of a training step on megatron-core that the trainer (engine/trainer.py) and the
probes share: the LM forward step, megatron DDP, the order in which ranks read samples,
micro-batches, logging validation results, and the stop request that SIGTERM/SIGINT set.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.transformer.transformer_config import TransformerConfig

from gts_megatron.engine.metrics import RunLog

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


def mean_reports(reports: list[dict], device: torch.device) -> dict[str, float]:
    """Each reported metric (loss, router accuracy, ...) averaged over micro-batches and DP ranks;
    with pipeline parallelism the last stage's (the only one that computes the loss), on every stage."""
    keys = list(reports[0]) if reports else ["loss"]
    means = {key: _mean_over_data_parallel([r[key] for r in reports], device) for key in keys}
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return means
    box = [means]
    dist.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                               group=parallel_state.get_pipeline_model_parallel_group())
    return box[0]


@dataclass
class TrainResult:
    """How a training run ended (engine/trainer.py)."""

    step: int
    loss: Optional[float]
    valid_loss: Optional[float]  # mean over the validation sets
    valid_losses: Optional[dict[str, float]] = None  # per validation set (per language)
    interrupted_by: Optional[int] = None
    checkpoint: Optional[Path] = None


def log_validation(log: RunLog, step: int, results: dict[str, dict]) -> Optional[float]:
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
