"""Parameter counts from a model's shape, apart from the model so that light tools (the plan's
summary, HF import, `gts bench layout`) count without importing megatron."""
from __future__ import annotations

from typing import Optional

from gts_megatron.config import ModelConfig
from gts_megatron.contracts.plan import Plan
from gts_megatron.model.vocab import padded_vocab_size


def layer_parameter_sizes(model: ModelConfig) -> dict[str, int]:
    """Parameters of each kind of block of the dense model, unsharded: one layer's attention (with
    its norm), one layer's MLP (with its norm), one expert (an MLP without a norm), the input
    embedding, the output layer (0 when tied) and the padded vocabulary."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = (model.num_query_groups or model.num_attention_heads) * (h // model.num_attention_heads)
    vocab = padded_vocab_size(model.vocab_size)
    attention = h * (h + 2 * kv) + h * h + h + ((h + 2 * kv) if model.qkv_bias else 0)  # fused QKV, output, norm
    return {"attention": attention, "mlp": 3 * h * f + h, "expert": 3 * h * f,  # gate+up fused, down
            "embedding": vocab * h, "output": 0 if model.tie_embeddings else vocab * h, "vocab": vocab}


def count_parameters(model: ModelConfig) -> int:
    """Parameters of the whole (unsharded) dense model, padded vocabulary included."""
    sizes = layer_parameter_sizes(model)
    return (model.num_layers * (sizes["attention"] + sizes["mlp"]) + sizes["embedding"] + sizes["output"]
            + model.hidden_size)  # + final norm


def moe_parameter_counts(model: ModelConfig, plan: Plan, topk: int) -> tuple[int, int]:
    """(total, active per token) parameters of the expanded model, unsharded."""
    expert = layer_parameter_sizes(model)["expert"]
    router = plan.num_experts * model.hidden_size
    layers = len(plan.moe_layers)
    dense = count_parameters(model)
    return (dense + layers * ((plan.num_experts - 1) * expert + router),
            dense + layers * ((topk - 1) * expert + router))


def parameter_counts(model: ModelConfig, plan: Optional[Plan] = None, topk: int = 1) -> tuple[int, int]:
    """(total, active per token) parameters: the dense model's, or with ``plan`` the expanded one's."""
    if plan is None:
        return count_parameters(model), count_parameters(model)
    return moe_parameter_counts(model, plan, topk)
