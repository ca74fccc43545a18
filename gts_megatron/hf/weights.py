"""Weights between Hugging Face (Llama/Mistral/Qwen2 names) and the megatron GPTModel (full,
unsharded tensors), and reading/writing safetensors checkpoints, sharded or not.

Megatron fuses Q, K and V into one matrix laid out per query group: for each key/value head g,
the query heads that share it, then its key head, then its value head. The MLP's gate and up
projections are fused as [gate; up]. The embedding has rows padded to a multiple of 128.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config import ModelConfig
from gts_megatron.errors import GtsError
from gts_megatron.model import state_names as names
from gts_megatron.model.vocab import padded_vocab_size

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: model.safetensors, or the shards its index names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GtsError(f"{index} is not a safetensors index ({exc})") from None
        shards = sorted(set(weight_map.values()))
    elif (folder / SINGLE).is_file():
        shards = [SINGLE]
    else:
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(found[:3])}: pickle formats are not read; convert to safetensors)" if found else ""
        raise GtsError(f"{folder} has no {SINGLE} and no {INDEX}{hint}")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise GtsError(f"{index}: shard(s) {', '.join(missing)} missing from {folder}")
    state = {}
    for shard in shards:
        try:
            state.update(load_file(str(folder / shard)))
        except (SafetensorError, OSError) as exc:
            raise GtsError(f"{folder / shard}: not a readable safetensors file ({exc})") from None
    return state


def write_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Save ``state`` as model.safetensors, or as shards plus an index when it is larger than
    ``max_shard_bytes`` (each file written under a temporary name, then renamed)."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor.contiguous(), size + nbytes
    shards.append(current)
    names = [SINGLE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                                for i in range(len(shards))]
    for name, shard in zip(names, shards):
        tmp = folder / f".tmp-{name}"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / name)
    if len(shards) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.numel() * t.element_size() for t in state.values())
        atomic_write_text(folder / INDEX, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2))


def _qkv_fuse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """[np*hn, ...], [ng*hn, ...], [ng*hn, ...] -> megatron's per-group [ng*(np/ng+2)*hn, ...]."""
    hn = k.shape[0] // groups
    rest = q.shape[1:]
    q = q.reshape(groups, -1, *rest)
    k, v = k.reshape(groups, hn, *rest), v.reshape(groups, hn, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _qkv_split(qkv: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hn = qkv.shape[0] // (heads + 2 * groups)
    per_group = heads // groups * hn
    fused = qkv.reshape(groups, per_group + 2 * hn, *qkv.shape[1:])
    q, k, v = fused.split([per_group, hn, hn], dim=1)
    return (t.reshape(-1, *qkv.shape[1:]) for t in (q, k, v))


def _take(state: dict, key: str, shape: tuple, source: str) -> torch.Tensor:
    if key not in state:
        raise GtsError(f"{source}: tensor {key} is missing")
    tensor = state[key]
    if tuple(tensor.shape) != shape:
        raise GtsError(f"{source}: tensor {key} has shape {tuple(tensor.shape)}, config.json implies {shape}")
    return tensor


def hf_to_megatron(hf: dict[str, torch.Tensor], model: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Megatron GPTModel tensors (full, vocabulary padded) from HF ones; refuses missing tensors
    and shapes that do not match the config."""
    h, f, v = model.hidden_size, model.ffn_hidden_size, model.vocab_size
    heads, groups = model.num_attention_heads, model.num_query_groups or model.num_attention_heads
    hn = h // heads
    pad = padded_vocab_size(v) - v

    def vocab(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(pad, h)]) if pad else t

    out = {names.EMBEDDING: vocab(_take(hf, "model.embed_tokens.weight", (v, h), source)),
           names.FINAL_NORM: _take(hf, "model.norm.weight", (h,), source)}
    if not model.tie_embeddings:
        out[names.OUTPUT_LAYER] = vocab(_take(hf, "lm_head.weight", (v, h), source))
    for i in range(model.num_layers):
        src, dst = f"model.layers.{i}.", names.layer_prefix(i)
        q, k, val = (_take(hf, f"{src}self_attn.{n}_proj.weight", (rows, h), source)
                     for n, rows in (("q", heads * hn), ("k", groups * hn), ("v", groups * hn)))
        out[dst + "self_attention.linear_qkv.weight"] = _qkv_fuse(q, k, val, groups)
        if model.qkv_bias:
            out[dst + "self_attention.linear_qkv.bias"] = _qkv_fuse(
                *(_take(hf, f"{src}self_attn.{n}_proj.bias", (rows,), source)
                  for n, rows in (("q", heads * hn), ("k", groups * hn), ("v", groups * hn))), groups)
        out[dst + "self_attention.linear_proj.weight"] = _take(hf, f"{src}self_attn.o_proj.weight", (h, h), source)
        out[dst + "input_layernorm.weight"] = _take(hf, f"{src}input_layernorm.weight", (h,), source)
        out[dst + "pre_mlp_layernorm.weight"] = _take(hf, f"{src}post_attention_layernorm.weight", (h,), source)
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([_take(hf, f"{src}mlp.gate_proj.weight", (f, h), source),
                                                        _take(hf, f"{src}mlp.up_proj.weight", (f, h), source)])
        out[dst + "mlp.linear_fc2.weight"] = _take(hf, f"{src}mlp.down_proj.weight", (h, f), source)
    return out


def _mlp_to_hf(state: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    gate, up = state[f"{src}linear_fc1.weight"].chunk(2)
    return {f"{dst}gate_proj.weight": gate, f"{dst}up_proj.weight": up, f"{dst}down_proj.weight": state[f"{src}linear_fc2.weight"]}


def megatron_to_hf(state: dict[str, torch.Tensor], model: ModelConfig, moe_layers=(), num_experts: int = 0
                   ) -> dict[str, torch.Tensor]:
    """HF tensors (vocabulary unpadded) from a megatron GPTModel's full state; in ``moe_layers``
    the router and each expert (``model.layers.N.mlp.router`` / ``.experts.E.*``)."""
    heads, groups = model.num_attention_heads, model.num_query_groups or model.num_attention_heads
    v = model.vocab_size
    out = {"model.embed_tokens.weight": state[names.EMBEDDING][:v], "model.norm.weight": state[names.FINAL_NORM]}
    if not model.tie_embeddings:
        out["lm_head.weight"] = state[names.OUTPUT_LAYER][:v]
    for i in range(model.num_layers):
        src, dst = names.layer_prefix(i), f"model.layers.{i}."
        for suffix in ("weight", "bias") if model.qkv_bias else ("weight",):
            q, k, val = _qkv_split(state[f"{src}self_attention.linear_qkv.{suffix}"], heads, groups)
            out.update({f"{dst}self_attn.q_proj.{suffix}": q, f"{dst}self_attn.k_proj.{suffix}": k,
                        f"{dst}self_attn.v_proj.{suffix}": val})
        out[f"{dst}self_attn.o_proj.weight"] = state[f"{src}self_attention.linear_proj.weight"]
        out[f"{dst}input_layernorm.weight"] = state[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = state[f"{src}pre_mlp_layernorm.weight"]
        if i in moe_layers:
            out[f"{dst}mlp.router.weight"] = state[names.router_key(i)]
            for e in range(num_experts):
                out.update(_mlp_to_hf(state, names.expert_prefix(i, e), f"{dst}mlp.experts.{e}."))
        else:
            out.update(_mlp_to_hf(state, f"{src}mlp.", f"{dst}mlp."))
    return {k: t.contiguous().clone() for k, t in out.items()}
