"""Names in the state dict of the GPTModel (dense or GtS MoE) that stages reason about: a layer's
dense MLP, an MoE layer's experts and router, the embedding and output layer. `gts expand`,
`gts adapt`, the probes and hf/weights.py (which maps these to Hugging Face names, both ways)
read them here rather than spelling megatron's keys themselves."""
from __future__ import annotations

import re
from typing import Optional

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
FFN_WEIGHTS = ("mlp.linear_fc1.weight", "mlp.linear_fc2.weight")  # within a layer: the dense MLP's matrices

_EXPERT = re.compile(r"^(?P<mlp>.*\.mlp)\.experts\.local_experts\.(?P<expert>\d+)\.(?P<rest>.*)$")


def layer_prefix(layer: int) -> str:
    """``decoder.layers.<layer>.``: every tensor of one transformer layer starts with it."""
    return f"decoder.layers.{layer}."


def expert_prefix(layer: int, expert: int) -> str:
    """The prefix of expert ``expert``'s MLP in MoE layer ``layer`` (its linear_fc1/linear_fc2 follow)."""
    return f"{layer_prefix(layer)}mlp.experts.local_experts.{expert}."


def router_key(layer: int) -> str:
    """The router's weight in MoE layer ``layer`` (experts x hidden)."""
    return f"{layer_prefix(layer)}mlp.router.weight"


def is_router(key: str) -> bool:
    """Whether ``key`` is a router tensor."""
    return ".mlp.router." in key


def expert_of(key: str) -> Optional[int]:
    """The expert a tensor belongs to, or None for a tensor outside the experts."""
    match = _EXPERT.match(key)
    return int(match["expert"]) if match else None


def dense_source(key: str) -> str:
    """The dense model's tensor that ``key`` starts as under expansion: an expert's tensor is
    its layer's dense MLP tensor; any other tensor is itself."""
    match = _EXPERT.match(key)
    return f"{match['mlp']}.{match['rest']}" if match else key


def with_expert(key: str, expert: int) -> str:
    """The same tensor of another expert of the same layer."""
    match = _EXPERT.match(key)
    if match is None:
        raise ValueError(f"{key} is not an expert's tensor")
    return f"{match['mlp']}.experts.local_experts.{expert}.{match['rest']}"
