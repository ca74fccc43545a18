"""A Llama-style decoder as a megatron-core GPTModel with the local (non-TransformerEngine) spec.

RMSNorm, SwiGLU, RoPE (optionally Llama 3 scaled), grouped-query attention, no biases except
optional QKV biases (Qwen2), tied or untied embeddings. The model
definition lives here; how it is split over processes comes from megatron's parallel_state.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from gts_megatron.config import ModelConfig, ParallelConfig
from gts_megatron.model.vocab import padded_vocab_size

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SDPAttention(DotProductAttention):
    """Core attention through torch's scaled_dot_product_attention.

    Same constructor, parameters and checkpoint layout as megatron's DotProductAttention (so it
    drops into the layer spec), but one fused call: flash or memory-efficient kernels on GPU,
    a fused CPU kernel otherwise, and grouped-query attention without repeating K and V.
    """

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np * hn]."""
        assert packed_seq_params is None and attention_bias is None, "not supported by SDPAttention"
        sq, batch = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type == AttnMaskType.causal  # as megatron's softmax: causal ignores the mask
        mask = None if causal or attention_mask is None else ~attention_mask  # megatron: True = hide
        dropout = self.attention_dropout.p if self.training else 0.0
        # the same RNG discipline as megatron: TP ranks hold different heads, so different streams
        rng = (tensor_parallel.get_cuda_rng_tracker().fork()
               if dropout and not self.config.sequence_parallel else contextlib.nullcontext())
        with rng:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                scale=self.softmax_scale, enable_gqa=q.shape[1] != k.shape[1])
        return context.permute(2, 0, 1, 3).reshape(sq, batch, self.hidden_size_per_partition)


def pipeline_layout(stage_layers: list[int]) -> Optional[list[list[str]]]:
    """megatron's layout of pipeline stages (embedding on the first, loss on the last) for an
    uneven split; None (megatron's even split) when every stage holds as many layers."""
    if len(set(stage_layers)) == 1:
        return None
    layout = [["decoder"] * n for n in stage_layers]
    layout[0].insert(0, "embedding")
    layout[-1].append("loss")
    return layout


def transformer_config(model: ModelConfig, parallel: ParallelConfig, **overrides) -> TransformerConfig:
    """The megatron TransformerConfig of a model config under a parallel layout.

    ``overrides`` carries extra TransformerConfig fields (the MoE stages add theirs).
    """
    dtype = _DTYPES[model.dtype]
    fields = dict(
        num_layers=model.num_layers, hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads, num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size, normalization="RMSNorm", layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=model.qkv_bias,
        hidden_dropout=model.hidden_dropout, attention_dropout=model.attention_dropout,
        init_method_std=model.init_std, params_dtype=dtype, pipeline_dtype=dtype,
        bf16=model.dtype == "bf16", fp16=model.dtype == "fp16",
        # initialise full matrices on the CPU from one seed, then shard: weights are then the same
        # at every TP size, which is what makes TP and single-process runs comparable.
        use_cpu_initialization=True, perform_initialization=True,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        pipeline_model_parallel_layout=pipeline_layout(parallel.stage_layers(model.num_layers)),
        sequence_parallel=parallel.sequence_parallel and parallel.tensor > 1,
        expert_model_parallel_size=parallel.expert, expert_tensor_parallel_size=parallel.expert_tensor_size,
        # fusions that need apex or TransformerEngine stay off; torch has no equivalents here
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, bias_dropout_fusion=False,
        cross_entropy_loss_fusion=False)
    fields.update(overrides)
    return TransformerConfig(**fields)


def decoder_spec(config: TransformerConfig, attention: str = "sdpa") -> TransformerBlockSubmodules:
    """The decoder block spec: megatron's local spec (dense or MoE per layer) with our attention."""
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm")
    block.layer_specs = [copy.deepcopy(spec) for spec in block.layer_specs]
    if attention == "sdpa":
        for spec in block.layer_specs:
            spec.submodules.self_attention.submodules.core_attention = ModuleSpec(module=SDPAttention)
    return block


def build_model(model: ModelConfig, config: TransformerConfig,
                spec: TransformerBlockSubmodules | None = None) -> torch.nn.Module:
    """Build the GPTModel on this rank (its TP/EP shard), on the current device.

    For bf16/fp16 it is wrapped in megatron's Float16Module, as Megatron-LM does.
    """
    gpt = GPTModel(
        config=config, transformer_layer_spec=spec or decoder_spec(config, model.attention),
        pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage(),
        vocab_size=padded_vocab_size(model.vocab_size), max_sequence_length=model.max_seq_length,
        share_embeddings_and_output_weights=model.tie_embeddings, position_embedding_type="rope",
        rotary_base=model.rope_theta, rope_scaling=model.rope_scaling_factor is not None,
        rope_scaling_factor=model.rope_scaling_factor or 8.0, parallel_output=True)
    if torch.cuda.is_available():
        gpt = gpt.cuda(torch.cuda.current_device())
    if config.bf16 or config.fp16:
        gpt = Float16Module(config, gpt)
    return gpt

