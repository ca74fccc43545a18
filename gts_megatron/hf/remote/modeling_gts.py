"""A Group-then-Scale (GtS) model exported by gts_megatron: Llama with mixture-of-experts MLPs
in the planned layers, one expert per language group.

Group routing needs each sequence's group: ``model(input_ids, group_ids=...)`` or
``model.generate(input_ids, group_ids=...)`` with one group id per sequence, or
``languages=["fr", ...]`` mapped through ``config.language_to_group``. Learned routing
(``config.routing = "learned"``) needs neither.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from .configuration_gts import GtsConfig, GtsQwen2Config


class GtsExpert(nn.Module):
    """One expert: the SwiGLU MLP of the dense model it was copied from."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GtsMoE(nn.Module):
    """Router (linear, no bias) and one SwiGLU expert per language group."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(GtsExpert(config) for _ in range(config.num_experts))
        self.group_ids: Optional[torch.Tensor] = None  # [batch], set by GtsForCausalLM.forward

    def _weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token expert weights [batch, seq, experts]."""
        experts = self.config.num_experts
        if self.config.routing == "group":
            if self.group_ids is None:
                raise ValueError("group routing needs group_ids=[one per sequence] or languages=[...]; or set "
                                 "config.routing='learned'")
            to_expert = torch.tensor(self.config.group_to_expert, device=hidden.device)
            chosen = to_expert[self.group_ids.to(hidden.device)][:, None].expand(hidden.shape[:2])
            return F.one_hot(chosen, experts).to(hidden.dtype)
        logits = self.router(hidden).float()
        k = self.config.moe_top_k
        if k == 1:  # megatron: softmax over all experts, then the top one's probability
            top, index = logits.softmax(-1).topk(1, dim=-1)
        else:  # megatron: softmax over the chosen k
            top, index = logits.topk(k, dim=-1)
            top = top.softmax(-1)
        return torch.zeros_like(logits).scatter(-1, index, top).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weights = self._weights(hidden)
        out = torch.zeros_like(hidden)
        for e, expert in enumerate(self.experts):
            rows = weights[..., e] != 0
            if rows.any():
                out[rows] += expert(hidden[rows]) * weights[..., e][rows][:, None]
        return out


class _GtsModel:
    """What the Llama and Qwen2 variants share (a mixin before their transformers base class):
    MoE MLPs in ``config.moe_layers``, and the forward pass's group ids handed to them."""

    def __init__(self, config):
        super().__init__(config)
        for layer in config.moe_layers:
            self.model.layers[layer].mlp = GtsMoE(config)
        self.post_init()

    def group_ids_of(self, languages: Sequence[str]) -> torch.Tensor:
        """Group ids of a batch of language codes (KeyError names an unknown language)."""
        try:
            return torch.tensor([self.config.language_to_group[lang] for lang in languages])
        except KeyError as exc:
            raise KeyError(f"language {exc.args[0]!r} is not in this model's plan "
                           f"({', '.join(self.config.language_to_group)})") from None

    def forward(self, input_ids=None, group_ids=None, languages=None, **kwargs):
        if languages is not None:
            group_ids = self.group_ids_of(languages)
        for layer in self.config.moe_layers:
            self.model.layers[layer].mlp.group_ids = group_ids
        return super().forward(input_ids=input_ids, **kwargs)


class GtsForCausalLM(_GtsModel, LlamaForCausalLM):
    """Llama whose MLPs in ``config.moe_layers`` are :class:`GtsMoE` layers."""

    config_class = GtsConfig


class GtsQwen2ForCausalLM(_GtsModel, Qwen2ForCausalLM):
    """Qwen2 (QKV biases) whose MLPs in ``config.moe_layers`` are :class:`GtsMoE` layers."""

    config_class = GtsQwen2Config
