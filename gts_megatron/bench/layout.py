"""`gts bench layout`: which PP x TP x EP x DP layout holds a GtS model on a GPU cluster, computed
from the model's shape, not measured.

Per GPU, for the pipeline stage that holds the most (the first: the embedding and ``min(PP, m)``
micro-batches of activations in flight under 1F1B; or the last: the output layer and logits):
- weights in bf16 (2 bytes), gradients reduced in fp32 (4), and the distributed optimizer's fp32
  master weights and Adam moments (12) sharded over the data-parallel ranks (the experts' over
  their expert-data-parallel ranks);
- activations per layer and micro-batch after Korthikanti et al. (2022) with sequence
  parallelism: ``34 s b h / TP`` with selective recomputation, ``s b h (34 + 5 a s / h) / TP``
  without, ``2 s b h / TP`` (the layer inputs) with full recomputation;
- the MoE layers spread evenly over the stages (a plan whose MoE layers cluster balances with
  ``parallel.pipeline_layers``); under group routing a token visits one expert, so an MoE layer's
  activations are a dense layer's.
Bubble: ``(PP - 1) / (m + PP - 1)`` of a step for m micro-batches per data-parallel rank (1F1B).
All-to-all: per GPU and step, each MoE layer sends its tokens' hidden states to their experts and
back, forward and backward (4 transfers of ``s b / TP`` tokens x h x 2 bytes per micro-batch),
the share ``(EP - 1) / EP`` leaving the GPU when the groups' tokens spread evenly; with
``moe.placement`` every EP rank reads only its own groups' languages and nothing leaves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

from gts_megatron.config import BenchLayoutConfig, ModelConfig, build_config
from gts_megatron.model.sizes import count_parameters, layer_parameter_sizes

GB = 1e9
RESERVE = 0.15  # of each GPU's memory: CUDA context, NCCL buffers, fragmentation


@dataclass(frozen=True)
class Layout:
    """One layout and what it costs per GPU."""

    pp: int
    tp: int
    ep: int
    etp: int
    dp: int
    micro_batches: int
    memory_gb: float          # the fullest stage's GPU
    weights_gb: float         # weights, gradients and optimizer state of that GPU
    activations_gb: float
    bubble: float
    alltoall_gb: float        # sent per GPU per step, groups' tokens spread evenly
    fits: bool


def _activation_bytes(cfg: BenchLayoutConfig, m: ModelConfig, tp: int) -> float:
    """One layer's activations for one micro-batch on one GPU (sequence parallel)."""
    s, b, h, a = cfg.seq_length, cfg.micro_batch_size, m.hidden_size, m.num_attention_heads
    per_token = {"selective": 34.0, "none": 34.0 + 5.0 * a * s / h, "full": 2.0}[cfg.recompute]
    return s * b * h * per_token / tp


def cost(cfg: BenchLayoutConfig, m: ModelConfig, sizes: dict[str, int], pp: int, tp: int, ep: int,
         etp: int) -> Layout:
    """The memory, bubble and all-to-all volume of one layout (module doc); ``sizes`` are
    model/sizes.layer_parameter_sizes(m)."""
    world = cfg.nodes * cfg.gpus_per_node
    dp = world // (tp * pp)
    edp = tp * dp // (ep * etp)  # expert-data-parallel ranks: the experts' optimizer shards
    per_stage = m.num_layers // pp
    moe_here = -(-cfg.moe_layers // pp)  # spread evenly, rounded up
    dense = per_stage * sizes["attention"] + (per_stage - moe_here) * sizes["mlp"] + moe_here * (
        m.hidden_size * (cfg.experts + 1))  # an MoE layer keeps its norm and gains a router
    experts = moe_here * (cfg.experts // ep) * sizes["expert"] / etp
    last = sizes["output"] + m.hidden_size  # the output layer and the final norm
    edge = max(sizes["embedding"], last) if pp > 1 else sizes["embedding"] + last
    state = (2 + 4 + 12 / dp) * (dense + edge) / tp + (2 + 4 + 12 / edp) * experts
    micro_batches = cfg.global_batch_size // (dp * cfg.micro_batch_size)
    in_flight = min(pp, micro_batches)
    tokens = cfg.seq_length * cfg.micro_batch_size
    logits = 4.0 * tokens * sizes["vocab"] / tp
    activations = per_stage * _activation_bytes(cfg, m, tp) * in_flight + logits
    alltoall = 4 * (tokens / tp) * m.hidden_size * 2 * moe_here * micro_batches * (ep - 1) / ep
    memory = state + activations
    return Layout(pp, tp, ep, etp, dp, micro_batches, memory / GB, state / GB, activations / GB,
                  (pp - 1) / (micro_batches + pp - 1), alltoall / GB, memory <= (1 - RESERVE) * cfg.gpu_memory_gb * GB)


def layouts(cfg: BenchLayoutConfig) -> tuple[ModelConfig, list[Layout]]:
    """Every layout the cluster and the model can hold: those that fit first (the smallest bubble,
    then the least model parallelism TP x PP, then the least all-to-all), then the rest by memory."""
    m = build_config({"model": cfg.preset}, "gts bench layout").model
    world = cfg.nodes * cfg.gpus_per_node
    found, sizes = [], layer_parameter_sizes(m)
    divisors = [n for n in range(1, world + 1) if world % n == 0]
    for pp, tp, ep in product(divisors, divisors, divisors):
        heads_ok = m.num_attention_heads % tp == 0 and (m.num_query_groups or m.num_attention_heads) % tp == 0
        if (tp > cfg.gpus_per_node or not heads_ok or m.ffn_hidden_size % tp or m.num_layers % pp
                or world % (tp * pp) or cfg.experts % ep):
            continue
        dp = world // (tp * pp)
        if cfg.global_batch_size % (dp * cfg.micro_batch_size):
            continue
        for etp in sorted({1, tp}):
            if (tp * dp) % (ep * etp) == 0:
                found.append(cost(cfg, m, sizes, pp, tp, ep, etp))
    found.sort(key=lambda x: (0, round(x.bubble, 3), x.tp * x.pp, x.alltoall_gb, x.memory_gb) if x.fits
               else (1, x.memory_gb))
    return m, found


def bench_layout(cfg: BenchLayoutConfig) -> dict:
    """The model, its GtS parameter count and the best layouts (``cfg.top``)."""
    m, found = layouts(cfg)
    sizes, dense = layer_parameter_sizes(m), count_parameters(m)
    gts = dense + cfg.moe_layers * ((cfg.experts - 1) * sizes["expert"] + m.hidden_size * cfg.experts)
    return {"config": cfg.model_dump(), "dense_parameters": dense, "gts_parameters": gts,
            "active_parameters": dense + cfg.moe_layers * m.hidden_size * cfg.experts,
            "layouts": [asdict(x) for x in found[:cfg.top]], "considered": len(found),
            "fitting": sum(x.fits for x in found)}


def report(result: dict) -> str:
    """A Markdown table of the layouts, best first, with the assumptions in one line."""
    c = result["config"]
    lines = [f"{c['preset']} base as GtS: {c['experts']} experts in {c['moe_layers']} MoE layers, "
             f"{result['gts_parameters'] / 1e9:.1f}B parameters ({result['dense_parameters'] / 1e9:.1f}B dense, "
             f"{result['active_parameters'] / 1e9:.1f}B active per token); {c['nodes']} x {c['gpus_per_node']} GPUs of "
             f"{c['gpu_memory_gb']:.0f} GB; sequences of {c['seq_length']}, micro-batch {c['micro_batch_size']}, "
             f"global batch {c['global_batch_size']}, {c['recompute']} recomputation; {result['fitting']} of "
             f"{result['considered']} layouts fit in {100 * (1 - RESERVE):.0f}% of a GPU",
             "", "| PP | TP | EP | expert TP | DP | micro-batches | GB per GPU | of which weights+optimizer | "
                 "bubble | all-to-all GB/step/GPU (moe.placement: 0) | fits |", "|" + "---|" * 11]
    for x in result["layouts"]:
        lines.append(f"| {x['pp']} | {x['tp']} | {x['ep']} | {x['etp']} | {x['dp']} | {x['micro_batches']} | "
                     f"{x['memory_gb']:.1f} | {x['weights_gb']:.1f} | {100 * x['bubble']:.1f}% | "
                     f"{x['alltoall_gb']:.1f} | {'yes' if x['fits'] else 'no'} |")
    return "\n".join(lines)
