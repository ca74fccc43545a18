"""The same Llama-style decoder in plain PyTorch, for engines that are not megatron-core
(DeepSpeed ZeRO probes of models too large for one device).

Parameter names and layouts are megatron's (fused QKV grouped per query group, fused gate+up,
RMSNorm weights), so a megatron state dict loads as is and deltas carry the same names. It
computes the function of :func:`gts_megatron.model.llama.build_model` (tested to 1e-5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gts_megatron.config import ModelConfig
from gts_megatron.model.llama import padded_vocab_size


class _Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.groups = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.heads
        self.linear_qkv = nn.Linear(cfg.hidden_size, (self.heads + 2 * self.groups) * self.head_dim,
                                    bias=cfg.qkv_bias)
        self.linear_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        per_group = self.heads // self.groups
        # megatron's layout: for each query group, its query heads, then one key, then one value
        qkv = self.linear_qkv(x).view(b, s, self.groups, per_group + 2, self.head_dim)
        q = qkv[:, :, :, :per_group].reshape(b, s, self.heads, self.head_dim)
        k, v = qkv[:, :, :, per_group], qkv[:, :, :, per_group + 1]
        q, k = (_rotate(t, cos, sin).transpose(1, 2) for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True,
                                             enable_gqa=self.groups != self.heads)
        return self.linear_proj(out.transpose(1, 2).reshape(b, s, -1))


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [b, s, heads, dim], non-interleaved halves (megatron's default)."""
    first, second = t.chunk(2, dim=-1)
    return t * cos + torch.cat((-second, first), dim=-1) * sin


class _MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)  # [gate; up]
        self.linear_fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.linear_fc1(x).chunk(2, dim=-1)
        return self.linear_fc2(F.silu(gate) * up)


class _Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attention = _Attention(cfg)
        self.pre_mlp_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mlp = _MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class _Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)


class _Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(padded_vocab_size(cfg.vocab_size), cfg.hidden_size)


class TorchLlama(nn.Module):
    """tokens [b, s] -> per-token loss [b, s] with labels, else logits [b, s, vocab]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = _Embedding(cfg)
        self.decoder = _Decoder(cfg)
        if not cfg.tie_embeddings:
            self.output_layer = nn.Linear(cfg.hidden_size, padded_vocab_size(cfg.vocab_size), bias=False)

    def _rope(self, seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.cfg.hidden_size // self.cfg.num_attention_heads
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
        if self.cfg.rope_scaling_factor is not None:  # Llama 3 scaling: megatron's own function
            from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

            inv_freq = RotaryEmbedding._apply_scaling(None, inv_freq, factor=self.cfg.rope_scaling_factor)
        freqs = torch.outer(torch.arange(seq, dtype=torch.float32, device=device), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        return angles.cos(), angles.sin()

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding.word_embeddings(tokens)
        cos, sin = self._rope(tokens.shape[1], tokens.device)
        for layer in self.decoder.layers:
            x = layer(x, cos.to(x.dtype), sin.to(x.dtype))
        x = self.decoder.final_layernorm(x)
        weight = self.embedding.word_embeddings.weight if self.cfg.tie_embeddings else self.output_layer.weight
        logits = x @ weight.t()
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)


def from_megatron_state(cfg: ModelConfig, state: dict) -> TorchLlama:
    """A TorchLlama holding the weights of a (TP=1) megatron GPTModel state dict."""
    model = TorchLlama(cfg)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise KeyError(f"megatron state lacks {missing[:3]}")
    model.load_state_dict({k: state[k].detach().to(wanted[k].dtype) for k in wanted})
    return model
