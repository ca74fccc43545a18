"""The table `gts bench train` prints, then its result as one line of JSON."""
from __future__ import annotations

import json

from gts_megatron.bench.train.measure import SPLIT

GOALS = {"gts-group / dense": ">= 0.95 on a GPU", "gts-placement / authors-zero": ">= 1.5",
         "gts-group / authors-zero": ">= 1.5"}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(result: dict) -> str:
    """A Markdown table of every arm, the ratios between arms, and the result as JSON."""
    o = result["options"]
    peak = result["peak_flops_per_device"] / 1e12
    lines = [
        f"{o['preset']} ({result['dense_parameters'] / 1e6:.2f}M dense; GtS {result['gts_parameters'] / 1e6:.2f}M, "
        f"{result['gts_active_parameters'] / 1e6:.2f}M active, {o['experts']} experts in layers {result['moe_layers']}), "
        f"{result['tokens_per_step']} tokens per step ({o['micro_batch_size']} x {o['seq_length']} micro-batches), "
        f"{result['world_size']} x {result['device']} (TP {o['tensor']}, PP {o.get('pipeline', 1)}, EP {o['expert']}), "
        f"{o['dtype']}; {result.get('micro_batches', '?')} micro-batches per data-parallel rank; "
        f"median of {o['steps']} steps after {o['warmup']}; peak {peak:.3g} TFLOP/s per device "
        f"({'measured' if result['peak_measured'] else 'given'})",
        "",
        _row(["arm", "step ms (p25-p75)", "tokens/s", "vs dense", "MFU", "peak MiB", "idle in schedule %",
              *(f"{k.replace('_', ' ')} %" for k in SPLIT)]),
        _row(["---"] * (7 + len(SPLIT)))]
    for name, a in result["arms"].items():
        split = a["split_s"]
        step = sum(split.values()) or 1.0
        lines.append(_row([
            name, f"{a['median_s'] * 1e3:.1f} ({a['p25_s'] * 1e3:.1f}-{a['p75_s'] * 1e3:.1f})",
            f"{a['tokens_per_s']:.0f}", f"{a['vs_dense']:.3f}x" if "vs_dense" in a else "-",
            f"{a['mfu'] * 100:.1f}%", f"{a['peak_memory_bytes'] / 2**20:.1f}",
            "-" if a.get("schedule_idle") is None else f"{100 * a['schedule_idle']:.0f}",
            *(f"{100 * split[k] / step:.0f}" if split else "-" for k in SPLIT)]))
    lines.append("")
    if o.get("pipeline", 1) > 1:
        lines.append(f"pipeline bubble expected (p - 1) / (m + p - 1) = {100 * result['expected_bubble']:.0f}% "
                     f"at p = {o['pipeline']}, m = {result['micro_batches']}; idle in schedule = 1 - forward and "
                     "backward compute / forward-backward (megatron's schedule timers, averaged over ranks): "
                     "the bubble plus the time of the sends")
    for pair, value in result["ratios"].items():
        goal = GOALS.get(pair)
        lines.append(f"tokens/s {pair}: {value:.3f}x" + (f" (goal {goal})" if goal else ""))
    lines.append(json.dumps(result))
    return "\n".join(lines)
