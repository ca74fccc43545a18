"""`gts bench dispatch`: permute + unpermute throughput of the group dispatch kernels against
megatron-core's moe_utils permute/unpermute, argsort + index_select, and a plain copy of the same
bytes (the physical limit), all in one run, at the sizes of 1B-70B models.

A round trip reads and writes the [tokens, hidden] rows twice (permute, then unpermute), so every
method is charged 4 x tokens x hidden x element bytes; GB/s = those bytes / the median time.
Two copies are measured: into existing buffers (memory bandwidth alone: the physical limit the
goal is stated against) and into new tensors. On CPU torch has no caching allocator, so a new
large tensor's pages are zeroed by the kernel on first touch, which costs more than the copy;
the csrc kernels recycle their outputs (a pool, like the CUDA caching allocator), and are also
measured with the pool off. Methods take turns within each repeat, so drift in a shared
machine's speed hits them all.
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from gts_megatron.bench import machine
from gts_megatron.config import BenchDispatchConfig
from gts_megatron.errors import GtsError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _methods(hidden: torch.Tensor, ids: torch.Tensor, groups: int):
    """name -> a round trip (permute then unpermute) returning the restored rows."""
    from megatron.core.transformer.moe.moe_utils import permute, unpermute

    from gts_megatron import ops

    routing_map = torch.nn.functional.one_hot(ids, groups).bool()  # megatron's input, built untimed
    scratch, reused = torch.empty_like(hidden), torch.empty_like(hidden)

    def copy():  # no allocation at all: the memory bandwidth alone
        scratch.copy_(hidden)
        return reused.copy_(scratch)

    def copy_new():  # into new tensors
        fresh = torch.empty_like(hidden).copy_(hidden)
        return torch.empty_like(hidden).copy_(fresh)

    def group_kernels():
        permuted, _, row_map = ops.group_permute(hidden, ids, groups)
        return ops.group_unpermute(permuted, row_map)

    def group_kernels_no_pool():
        previous = ops.cpu_output_pool_limit(0)
        try:
            return group_kernels()
        finally:
            ops.cpu_output_pool_limit(previous)

    def megatron():
        permuted, _, sorted_indices = permute(hidden, routing_map, num_out_tokens=hidden.shape[0])
        return unpermute(permuted, sorted_indices, hidden.shape, routing_map=routing_map)

    def argsort_index_select():
        order = torch.argsort(ids, stable=True)
        permuted = hidden.index_select(0, order)
        return torch.empty_like(hidden).index_copy_(0, order, permuted)

    methods = {"copy": copy, "copy_new": copy_new, "group_permute": group_kernels,
               "megatron_permute": megatron, "argsort_index_select": argsort_index_select}
    if hidden.device.type == "cpu" and ops.HAVE_EXTENSION:
        methods["group_permute_no_pool"] = group_kernels_no_pool
    return methods


def bench_dispatch(cfg: BenchDispatchConfig, log=print) -> dict:
    """GB/s of each method at every (tokens, hidden), with ratios to the copy and to megatron."""
    from gts_megatron import ops

    hidden_sizes, token_counts, groups, dtype, repeats, device = (cfg.hidden, cfg.tokens, cfg.groups, cfg.dtype,
                                                                  cfg.repeats, cfg.device)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    rows = []
    for tokens in token_counts:
        for width in hidden_sizes:
            gen = torch.Generator().manual_seed(tokens + width)
            hidden = torch.randn(tokens, width, generator=gen).to(device=dev, dtype=DTYPES[dtype])
            ids = torch.randint(0, groups, (tokens,), generator=gen).to(dev)
            methods = _methods(hidden, ids, groups)
            for fn in methods.values():  # warm-up, and every method must restore the input exactly
                if not torch.equal(fn(), hidden):
                    raise GtsError("a dispatch method did not restore its input: the figures would be meaningless")
            times = {name: [] for name in methods}
            for _ in range(repeats):
                for name, fn in methods.items():
                    _sync(dev)
                    start = time.perf_counter()
                    fn()
                    _sync(dev)
                    times[name].append(time.perf_counter() - start)
            moved = 4 * hidden.numel() * hidden.element_size()
            gbps = {name: moved / statistics.median(t) / 1e9 for name, t in times.items()}
            row = {"tokens": tokens, "hidden": width, **{f"{k}_gbps": round(v, 2) for k, v in gbps.items()},
                   "vs_copy": round(gbps["group_permute"] / gbps["copy"], 3),
                   "vs_copy_new": round(gbps["group_permute"] / gbps["copy_new"], 3),
                   "vs_megatron": round(gbps["group_permute"] / gbps["megatron_permute"], 2),
                   "vs_argsort": round(gbps["group_permute"] / gbps["argsort_index_select"], 2)}
            rows.append(row)
            log(f"  tokens {tokens:>6} hidden {width:>5}: group_permute {row['group_permute_gbps']:7.1f} GB/s "
                f"= {row['vs_copy']:.2f}x copy, {row['vs_megatron']:.1f}x megatron, {row['vs_argsort']:.1f}x argsort")
            del hidden, methods
    threads = torch.get_num_threads()
    return {"benchmark": "dispatch", "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "dtype": dtype, "groups": groups, "repeats": repeats, "torch_threads": threads,
            "extension": ops.HAVE_EXTENSION, "rows": rows,
            "min_vs_copy": min(r["vs_copy"] for r in rows), "min_vs_megatron": min(r["vs_megatron"] for r in rows),
            **machine()}


def report(result: dict) -> str:
    """A table of :func:`bench_dispatch`'s result with the goals, then the result as JSON."""
    goal = "GPU: >= 0.8x copy, >= 1.5x megatron" if result["device"].startswith("cuda") else \
        "CPU: >= 0.8x copy, >= 3x megatron"
    lines = [f"permute + unpermute, {result['dtype']}, {result['groups']} groups, {result['device']}"
             f"{' (' + result['gpu'] + ')' if result['gpu'] else ''}, {result['cores']} cores; GB/s (median of "
             f"{result['repeats']}); copy = into existing buffers, copy new = into new tensors:",
             f"{'tokens':>7} {'hidden':>6} {'copy':>7} {'copy new':>9} {'group':>7} {'no pool':>8} {'megatron':>9} "
             f"{'argsort':>8} {'vs copy':>8} {'vs megatron':>12}"]
    for r in result["rows"]:
        no_pool = r.get("group_permute_no_pool_gbps")
        lines.append(f"{r['tokens']:>7} {r['hidden']:>6} {r['copy_gbps']:>7.1f} {r['copy_new_gbps']:>9.1f} "
                     f"{r['group_permute_gbps']:>7.1f} {'-' if no_pool is None else f'{no_pool:.1f}':>8} "
                     f"{r['megatron_permute_gbps']:>9.1f} {r['argsort_index_select_gbps']:>8.1f} "
                     f"{r['vs_copy']:>7.2f}x {r['vs_megatron']:>11.1f}x")
    lines.append(f"worst: {result['min_vs_copy']:.2f}x copy, {result['min_vs_megatron']:.1f}x megatron (goal {goal})")
    lines.append(json.dumps(result))
    return "\n".join(lines)
