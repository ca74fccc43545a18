"""One process of `gts bench train`: builds every arm (measuring its peak memory), steps them in
turn, times each module for the split, and (rank 0) writes the result. The result file appears
only when every arm has finished every step on every rank: a failed or interrupted run leaves
no figures behind."""
from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.bench import machine
from gts_megatron.bench.train.arms import build_arm
from gts_megatron.bench.train.measure import (ModuleTimer, flops_per_token, measure_peak_flops, peak_tensor_bytes,
                                              spread, time_split)
from gts_megatron.bench.train.workspace import Workspace
from gts_megatron.errors import GtsError
from gts_megatron.contracts.plan import load_plan
from gts_megatron.model.sizes import count_parameters, moe_parameter_counts

MEMORY_STEPS = 2  # steps inside the memory window: the second holds optimizer state and activations


def _log(runtime, message: str) -> None:
    if runtime.is_main:
        print(message, flush=True)


def _reduce(values: list[float], device: torch.device, op) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def _mean_over_ranks(value: Optional[float], runtime) -> float:
    """The mean of ``value`` over the ranks that have one (a pipeline's last stages)."""
    total, count = _reduce([value or 0.0, value is not None], runtime.device, dist.ReduceOp.SUM)
    return total / count if count else float("nan")


def _build_all(ws: Workspace, runtime, opts, names: list[str]) -> dict:
    """{arm name: (arm, peak tensor bytes, first step's loss)}, each arm built and stepped inside
    its memory window. The first loss, the mean over ranks, shows the arms start from the same
    weights: under group routing the expansion computes the dense model's function."""
    arms = {}
    for name in names:
        holder = {}

        def build_and_step():
            holder["arm"] = build_arm(name, ws, runtime, opts.dtype)
            holder["losses"] = [holder["arm"].step()[1] for _ in range(MEMORY_STEPS)]

        gc.collect()  # earlier arms' garbage must not be freed inside this arm's window
        peak = peak_tensor_bytes(build_and_step, runtime.device)
        peak = _reduce([peak], runtime.device, dist.ReduceOp.MAX)[0]  # the fullest rank
        loss = _mean_over_ranks(holder["losses"][0], runtime)
        arms[name] = (holder["arm"], int(peak), loss)
        _log(runtime, f"built {name} (peak tensor memory {peak / 2**20:.1f} MiB per rank; first loss {loss:.5f})")
    return arms


def _timed_steps(arms: dict, runtime, opts) -> dict[str, list[float]]:
    """Warm-up then timed steps, the arms taking turns (each step starts with the next arm)."""
    names = list(arms)
    times = {name: [] for name in names}
    total = opts.warmup + opts.steps
    diverged = len(names)  # index of the first arm whose loss was not finite on this rank
    for step in range(total):
        k = step % len(names)
        for name in names[k:] + names[:k]:
            seconds, loss = arms[name][0].step()
            if loss is not None and not math.isfinite(loss):
                diverged = min(diverged, names.index(name))
            if step >= opts.warmup:
                times[name].append(seconds)
        if (step + 1) % 10 == 0 or step + 1 == total:
            _log(runtime, f"step {step + 1}/{total} ({'timed' if step >= opts.warmup else 'warm-up'})")
    # checked once at the end, on all ranks together: a per-step check would add a collective to
    # every timed step, and a rank leaving alone would leave the others waiting
    diverged = int(_reduce([diverged], runtime.device, dist.ReduceOp.MIN)[0])
    if diverged < len(names):
        raise GtsError(f"arm {names[diverged]}: the loss was not finite (NaN or inf) during the steps; "
                       "a diverged run reports no figures")
    # a step lasts as long as its slowest rank
    return {name: _reduce(values, runtime.device, dist.ReduceOp.MAX) for name, values in times.items()}


def _split(arm, runtime, steps: int) -> tuple[dict[str, float], Optional[float]]:
    """Over ``steps`` extra hooked steps, means over ranks: seconds per step by module category,
    and the share of the schedule spent idle (None for arms without megatron's schedule)."""
    if steps == 0:
        return {}, None
    timer = ModuleTimer(runtime.device)
    arm.watch(timer)
    try:
        total = sum(arm.step()[0] for _ in range(steps))
    finally:
        timer.close()
        idle = arm.schedule_idle()
    split = time_split({k: v / steps for k, v in timer.seconds.items()}, total / steps)
    means = _reduce(list(split.values()), runtime.device, dist.ReduceOp.SUM)
    idle = None if idle is None else _mean_over_ranks(idle, runtime)
    return {k: v / runtime.env.world_size for k, v in zip(split, means)}, idle


def _peak_flops(runtime, opts) -> tuple[float, bool]:
    """Peak FLOP/s of one device: given, or the mean over ranks of a matmul measured on all at once."""
    if opts.peak_tflops is not None:
        return opts.peak_tflops * 1e12, False
    dtype = torch.bfloat16 if opts.dtype == "bf16" else torch.float32
    dist.barrier()
    measured = measure_peak_flops(runtime.device, dtype)
    return _reduce([measured], runtime.device, dist.ReduceOp.SUM)[0] / runtime.env.world_size, True


def _summary(ws: Workspace, opts, runtime, times, arms_built: dict, splits, peak, measured) -> dict:
    """The result: per arm (``arms_built``: {name: (peak memory, first loss)}) and ratios."""
    model, plan = ws.run_config("dense").model, load_plan(ws.plan)
    total, active = moe_parameter_counts(model, plan, topk=1)
    tokens = opts.batch * opts.seq_length
    flops = flops_per_token(model, opts.seq_length, len(plan.moe_layers), plan.num_experts)
    world = runtime.env.world_size
    arms = {}
    for name, values in times.items():
        stats, (split, idle) = spread(values), splits.get(name, ({}, None))
        arms[name] = {**stats, "tokens_per_s": tokens / stats["median_s"],
                      "mfu": flops * tokens / stats["median_s"] / (peak * world),
                      "peak_memory_bytes": arms_built[name][0], "first_loss": arms_built[name][1],
                      "split_s": split, "schedule_idle": idle}
    if "dense" in arms:
        for entry in arms.values():
            entry["vs_dense"] = entry["tokens_per_s"] / arms["dense"]["tokens_per_s"]
    return {"benchmark": "train", "options": json.loads(opts.model_dump_json()),
            "device": runtime.device.type, "world_size": world, "dense_parameters": count_parameters(model),
            "gts_parameters": total, "gts_active_parameters": active, "moe_layers": sorted(plan.moe_layers),
            "tokens_per_step": tokens, "flops_per_token": flops, "micro_batches": opts.micro_batches,
            "expected_bubble": (opts.pipeline - 1) / (opts.micro_batches + opts.pipeline - 1), "peak_flops_per_device": peak,
            "peak_measured": measured, "arms": arms, "ratios": ratios(arms), **machine()}


def ratios(arms: dict) -> dict[str, float]:
    """Tokens/s ratios of the comparisons the benchmark exists for, where both arms ran."""
    gts = next((a for a in ("gts-placement", "gts-group") if a in arms), None)
    pairs = [("gts-group", "dense"), ("gts-group", "gts-alltoall"), ("gts-placement", "gts-group"),
             (gts, "authors-zero"), (gts, "deepspeed-moe"), ("gts-alltoall", "dense")]
    return {f"{a} / {b}": arms[a]["tokens_per_s"] / arms[b]["tokens_per_s"]
            for a, b in pairs if a in arms and b in arms}


def run_worker(root: Path) -> None:
    """Measure every arm on this rank of the launched benchmark (collective)."""
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    ws = Workspace(root)
    opts = ws.options()
    runtime = init_runtime(ws.run_config("gts-group").parallel, opts.seed)
    try:
        # all arms at once (taking turns step by step), or one after another with --sequential
        batches = [[name] for name in opts.arm_names] if opts.sequential else [opts.arm_names]
        built, times, splits = {}, {}, {}
        for names in batches:
            arms = _build_all(ws, runtime, opts, names)
            times.update(_timed_steps(arms, runtime, opts))
            splits.update({name: _split(arm, runtime, opts.split_steps) for name, (arm, _, _) in arms.items()})
            for name, (arm, memory, loss) in arms.items():
                arm.close()
                built[name] = (memory, loss)
            del arms
            gc.collect()
            if runtime.device.type == "cuda":
                torch.cuda.empty_cache()
        peak, measured = _peak_flops(runtime, opts)
        result = _summary(ws, opts, runtime, times, built, splits, peak, measured)
        if runtime.is_main:
            atomic_write_text(ws.result, json.dumps(result, indent=1) + "\n")
        dist.barrier()
    finally:
        shutdown_runtime()
