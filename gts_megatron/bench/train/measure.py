"""What `gts bench train` measures besides step time: model FLOPs (for MFU), a device's peak
FLOP/s, peak tensor memory, and where a step's time goes module by module."""
from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from typing import Callable

import torch

from gts_megatron.config import ModelConfig
from gts_megatron.model.vocab import padded_vocab_size

SPLIT = ("attention", "dense_mlp", "moe_dispatch", "experts", "other")


def flops_per_token(model: ModelConfig, seq_length: int, moe_layers: int, experts: int) -> float:
    """Model FLOPs of one trained token (forward and backward, 3 x forward) at top-1 routing:
    2 per multiply-add of every weight a token meets (attention projections, the one MLP or
    expert it uses, routers, the output layer; not the embedding lookup) plus the attention
    scores and their weighted sum over the whole sequence (PaLM's 12 L h s; no causal discount).
    The same for every arm, so MFU compares implementations of one model."""
    h, heads = model.hidden_size, model.num_attention_heads
    head_dim = h // heads
    groups = model.num_query_groups or heads
    attention = h * (heads + 2 * groups) * head_dim + heads * head_dim * h
    mlp = 3 * h * model.ffn_hidden_size
    weights = model.num_layers * (attention + mlp) + moe_layers * experts * h + h * padded_vocab_size(model.vocab_size)
    return 6.0 * weights + 12.0 * model.num_layers * h * seq_length


def measure_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` on ``device`` (8192 on a GPU, which smaller
    ones leave idle; 2048 on a CPU): the peak that MFU is taken against when none is given."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size ** 3 / best


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tensor_bytes(work: Callable[[], None], device: torch.device) -> int:
    """The most tensor memory ``work`` holds at once, beyond what was allocated before it. Run it
    around building a model and two steps: parameters, gradients, optimizer state, activations.
    CUDA: the caching allocator's peak. CPU (no allocator statistics): the allocator's events in
    torch's profiler, op by op (an op's own temporaries freed inside it are not seen)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto prints every start and stop otherwise
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak


class _Mark(torch.autograd.Function):
    """Identity on tensors whose backward calls ``callback``: it runs once the gradients of all of
    them are known (on a module's outputs: its backward starts; on its inputs: it has ended)."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


def _marked(value, callback):
    """``value`` (a tensor, or a tuple, list or dict of them) with its grad-requiring tensors marked."""
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(
        value if isinstance(value, (tuple, list)) else [value]))
    slots = [k for k, v in items if isinstance(v, torch.Tensor) and v.requires_grad]
    if not slots or not torch.is_grad_enabled():
        return value
    marked = dict(zip(slots, _Mark.apply(callback, *(dict(items)[k] for k in slots))))
    if isinstance(value, dict):
        return {k: marked.get(k, v) for k, v in items}
    out = [marked.get(k, v) for k, v in items]
    return out[0] if isinstance(value, torch.Tensor) else type(value)(out)


class ModuleTimer:
    """Forward and backward wall time spent inside chosen modules, by category. The boundaries
    are module hooks, and identity autograd functions on the modules' inputs and outputs for
    backward (positional or keyword inputs alike). The device is synchronised at every boundary,
    so this runs on extra steps, never on timed ones."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._handles = []

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def watch(self, module: torch.nn.Module, category: str) -> None:
        """Add the time of every forward and backward pass through ``module`` to ``category``."""
        started = {}

        def start(key):
            started[key] = self._now()

        def stop(key):
            if key in started:  # a backward that never reached the module's start is not counted
                self.seconds[category] += self._now() - started.pop(key)

        def before(_module, args, kwargs):
            start("forward")
            return _marked(args, lambda: stop("backward")), _marked(kwargs, lambda: stop("backward"))

        def after(_module, _args, output):
            stop("forward")
            return _marked(output, lambda: start("backward"))

        self._handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                          module.register_forward_hook(after)]

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def time_split(watched: dict[str, float], step_s: float) -> dict[str, float]:
    """Seconds per step in attention, dense MLPs, MoE dispatch (the MoE layers less their
    experts: routing, permutation, all-to-all, combination) and experts; the rest is other
    (embedding, output layer and loss, optimizer, framework)."""
    moe = watched.get("moe_layer", 0.0)
    split = {"attention": watched.get("attention", 0.0), "dense_mlp": watched.get("dense_mlp", 0.0),
             "moe_dispatch": max(moe - watched.get("experts", 0.0), 0.0), "experts": watched.get("experts", 0.0)}
    split["other"] = max(step_s - sum(split.values()), 0.0)
    return split


def spread(times: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of step times (seconds)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "p25_s": q[0], "p75_s": q[2], "min_s": min(times),
            "max_s": max(times)}
